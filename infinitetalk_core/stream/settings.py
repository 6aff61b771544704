"""Every knob of a streaming run in one frozen dataclass, validated before any work starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..color import COLOR_METHODS as _MATCH_METHODS
from ..color import COLOR_REFERENCES as _MATCH_REFERENCES
from ..errors import InputValidationError
from ..sampling.guidance import GuidanceConfig
from ..sampling.inpaint import check_denoise, denoise_start_step
from .references import OVERFLOW_MODES, REFERENCE_STRATEGIES
from ..sampling.schedulers import check_scheduler, scheduler_timesteps
from ..sampling.seeds import chunk_seed
from ..sampling.refine import RefineSettings
from ..sampling.step_cache import StepCacheSettings

COLOR_METHODS = ("none", *_MATCH_METHODS)  # none, lab (reference), histogram, mkl
# first: the first chunk's reference frame, fixed for the whole video (reference behaviour);
# chunk: each chunk's own reference frame (right for V2V, where the source changes);
# previous_tail: the previous chunk's last M frames after correction (first chunk: its reference).
COLOR_REFERENCES = _MATCH_REFERENCES
AUDIO_PADDINGS = ("mirror", "silence")
# infinitetalk: the reference's conditioning (y = reference + grey frames, M clean context latents);
# svi_talk: Stable Video Infinity's talk layout (y = 1 motion frame + the reference as every padding
# frame, CLIP of the motion frame, no clean context latents), for MultiTalk weights + the SVI-Talk LoRA
MODES = ("infinitetalk", "svi_talk")
SVI_MOTION_FRAMES = 1  # SVI-Talk's num_motion_frames
SVI_SHIFT = 5.0  # SVI-Talk's flow shift


@dataclass(frozen=True)
class StreamSettings:
    """Sampling, colour and reference settings. Defaults are the reference CLI's at 480p."""

    steps: int = 40
    shift: float = 7.0
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    seed: int = 42
    color_method: str = "lab"
    color_strength: float = 1.0
    color_reference: str = "first"
    reference_strategy: str = "chunk_start"
    reference_overflow: str = "hold"
    audio_padding: str = "mirror"
    batch_passes: bool = True  # evaluate the guidance passes of a step in one batched DiT forward
    step_cache: StepCacheSettings = field(default_factory=StepCacheSettings)
    scheduler: str = "flow_euler"  # sampling.schedulers.SCHEDULERS
    refine: RefineSettings = field(default_factory=RefineSettings)  # experimental context refinement
    denoise: float = 1.0  # < 1: start each chunk from the noised source video latents (dubbing)
    mode: str = "infinitetalk"  # MODES

    def validate(self) -> None:
        """Raise InputValidationError naming the first bad setting (cheap; no model needed)."""
        check_scheduler(self.scheduler)
        scheduler_timesteps(self.scheduler, self.steps, self.shift)
        chunk_seed(self.seed, 0)
        check_denoise(self.denoise)
        if not isinstance(self.guidance, GuidanceConfig):
            raise InputValidationError(
                f"guidance must be a GuidanceConfig, got {type(self.guidance).__name__}.",
                "Build it with GuidanceConfig(text_scale=..., audio_scale=...).",
            )
        _choice("color_method", self.color_method, COLOR_METHODS)
        _choice("color_reference", self.color_reference, COLOR_REFERENCES)
        _choice("reference_strategy", self.reference_strategy, REFERENCE_STRATEGIES)
        _choice("reference_overflow", self.reference_overflow, OVERFLOW_MODES)
        _choice("audio_padding", self.audio_padding, AUDIO_PADDINGS)
        _choice("mode", self.mode, MODES)
        s = self.color_strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 1:
            raise InputValidationError(
                f"color_strength must be in [0, 1], got {s!r}.",
                "Use 1.0 (reference default) for full correction, 0 to disable it.",
            )
        if not isinstance(self.step_cache, StepCacheSettings):
            raise InputValidationError(
                f"step_cache must be a StepCacheSettings, got {type(self.step_cache).__name__}.",
                "Build it with StepCacheSettings(method=...).",
            )
        self.step_cache.validate(self.sampled_steps, self.scheduler)
        if not isinstance(self.refine, RefineSettings):
            raise InputValidationError(
                f"refine must be a RefineSettings, got {type(self.refine).__name__}.",
                "Build it with RefineSettings(every=..., strength=..., steps=...).",
            )
        self.refine.validate()
        if self.mode == "svi_talk" and self.refine.enabled:
            raise InputValidationError(
                "refine_every (context refinement) works on InfiniteTalk's context latents; svi_talk has none.",
                "Set refine_every to 0 with mode svi_talk (SVI-Talk repairs drift itself, from the reference).",
            )
        if not isinstance(self.batch_passes, bool):
            raise InputValidationError(
                f"batch_passes must be True or False, got {self.batch_passes!r}.", "Pass a boolean."
            )

    @property
    def sampled_steps(self) -> int:
        """Steps each chunk runs: all ``steps``, or the last round(steps·denoise) of them."""
        return self.steps - denoise_start_step(self.steps, self.denoise)

    @property
    def colour_enabled(self) -> bool:
        return self.color_method != "none" and self.color_strength > 0

    def cost_metadata(self, num_chunks: int) -> dict:
        """What the job costs in DiT pass calls, for the job manifest (refinement listed when on)."""
        g = self.guidance
        out = {"dit_calls_per_chunk": self.sampled_steps * len(g.passes)}
        if self.refine.enabled:
            refined = [k for k in range(num_chunks) if self.refine.applies_to(k)]
            out["refinement"] = {"experimental": True, **asdict(self.refine), "refined_chunks": refined,
                                 "extra_dit_calls_per_refined_chunk": self.refine.extra_calls(g),
                                 "extra_dit_calls_total": len(refined) * self.refine.extra_calls(g)}
        return out

    def to_json(self) -> dict:
        """Plain dict for job manifests (every field, guidance included). Options at their "off" value
        are left out, so job folders made before the option existed still match."""
        out = asdict(self)
        if not self.step_cache.enabled:
            del out["step_cache"]
        if self.scheduler == "flow_euler":
            del out["scheduler"]
        if not self.refine.enabled:
            del out["refine"]
        if self.denoise == 1.0:
            del out["denoise"]
        if self.mode == "infinitetalk":
            del out["mode"]
        return out


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputValidationError(
            f"{name} must be one of {', '.join(choices)}; got {value!r}.",
            f"Pick one of: {', '.join(choices)}.",
        )
