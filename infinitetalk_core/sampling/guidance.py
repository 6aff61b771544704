"""Guidance with separate text and audio scales (spec §5.2) and APG (spec §5.3).

Passes (model evaluations per step), named by their conditioning:
- "cond":       (prompt, audio)
- "drop_text":  (negative prompt, audio)
- "uncond":     (negative prompt, null audio)
- "drop_audio": (prompt, null audio)

Scales s_t (text) and s_a (audio); "== 1" means math.isclose(s, 1.0), as in the reference:
- s_t != 1, s_a != 1: 3 passes, v = v_u + s_t(v_c − v_t) + s_a(v_t − v_u)      (reference)
- s_t == 1, s_a != 1: 2 passes, v = v_a + s_a(v_c − v_a)                       (reference)
- s_t != 1, s_a == 1: 2 passes, v = v_t + s_t(v_c − v_t)   (the 3-pass formula with s_a = 1, exactly
  rearranged; the reference still runs 3 passes)
- s_t == 1, s_a == 1: 1 pass, v = v_c (distilled LoRAs; the reference still runs 2 passes)
``GuidanceConfig.reference_passes=True`` keeps the reference's pass sets for the last two rows.

APG (use_apg): v = v_c + (s_t − 1)·APG(v_c − v_t) + (s_a − 1)·APG(v_t − v_u) (or the matching 2-pass
form), where APG keeps a momentum running average r ← Δ + μ·r (μ = −0.75) per term, clips a copy
of r to L2 norm ≤ 55 (the buffer keeps the UNCLIPPED average) and keeps only its component
orthogonal to v_c (projection in float64, η = 0). Buffers start empty for every chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import InputValidationError

COND, DROP_TEXT, UNCOND, DROP_AUDIO = "cond", "drop_text", "uncond", "drop_audio"
ALL_PASSES = (COND, DROP_TEXT, UNCOND, DROP_AUDIO)
_SAMPLE_DIMS = (-4, -3, -2, -1)  # [C, T, H, W] of one sample; any leading batch dims are kept apart


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance settings. Defaults are the reference CLI's (text 5, audio 4, APG off)."""

    text_scale: float = 5.0
    audio_scale: float = 4.0
    use_apg: bool = False
    apg_momentum: float = -0.75  # reference --apg_momentum default
    apg_norm_threshold: float = 55.0  # reference --apg_norm_threshold default
    apg_eta: float = 0.0  # weight of the parallel component (the reference fixes 0)
    reference_passes: bool = False  # True: never skip a pass the reference runs

    def __post_init__(self) -> None:
        for name in ("text_scale", "audio_scale", "apg_momentum", "apg_norm_threshold", "apg_eta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputValidationError(
                    f"{name} must be a finite number, got {value!r}.", f"Set {name} to a number."
                )
        if not 0.0 <= self.text_scale <= 30.0 or not 0.0 <= self.audio_scale <= 30.0:
            raise InputValidationError(
                f"guidance scales must be in [0, 30], got text {self.text_scale}, audio {self.audio_scale}.",
                "Use text 5 / audio 4 for the base model, text 1 / audio 2 with a distillation LoRA.",
            )
        if not -1.0 < self.apg_momentum <= 1.0 or self.apg_norm_threshold < 0:
            raise InputValidationError(
                f"APG momentum must be in (-1, 1] and the norm threshold >= 0, got "
                f"{self.apg_momentum} / {self.apg_norm_threshold}.",
                "Use the reference values: momentum -0.75, threshold 55.",
            )


    @property
    def passes(self) -> tuple[str, ...]:
        """The guidance passes each step evaluates (``guidance_passes`` of these scales)."""
        return guidance_passes(self.text_scale, self.audio_scale, self.reference_passes)


@dataclass(frozen=True)
class APGState:
    """Momentum running averages of the text and audio guidance terms (None = empty buffer)."""

    text: torch.Tensor | None = None
    audio: torch.Tensor | None = None


def is_unit(scale: float) -> bool:
    return math.isclose(scale, 1.0)


def guidance_passes(text_scale: float, audio_scale: float, reference_passes: bool = False) -> tuple[str, ...]:
    """Names of the passes needed for these scales, "cond" first (see the module table)."""
    if is_unit(text_scale):
        return (COND,) if is_unit(audio_scale) and not reference_passes else (COND, DROP_AUDIO)
    if is_unit(audio_scale) and not reference_passes:
        return (COND, DROP_TEXT)
    return (COND, DROP_TEXT, UNCOND)


def guide_cfg(v_cond: torch.Tensor, v_drop_text: torch.Tensor, v_uncond: torch.Tensor,
              text_scale: float, audio_scale: float) -> torch.Tensor:
    """3-pass guidance: v_u + s_t(v_c − v_t) + s_a(v_t − v_u). Any shape."""
    return v_uncond + text_scale * (v_cond - v_drop_text) + audio_scale * (v_drop_text - v_uncond)


def guide_single(v_cond: torch.Tensor, v_other: torch.Tensor, scale: float) -> torch.Tensor:
    """2-pass guidance: v_o + s(v_c − v_o) (v_o = drop_audio with the audio scale, or drop_text)."""
    return v_other + scale * (v_cond - v_other)


def apg_update(diff: torch.Tensor, v_cond: torch.Tensor, running: torch.Tensor | None,
               momentum: float = -0.75, norm_threshold: float = 55.0, eta: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C, T, H, W] -> (guidance term, new running average), norms over the last 4 dims.

    r = diff + momentum·running; d = r·min(1, threshold/‖r‖); keep d − <d, û>û with û = v_c/‖v_c‖
    (float64), plus eta times the parallel part. The returned running average is r, unclipped.
    """
    running = diff if running is None else diff + momentum * running
    d = running
    if norm_threshold > 0:
        norm = torch.linalg.vector_norm(d, ord=2, dim=_SAMPLE_DIMS, keepdim=True)
        d = d * torch.clamp(norm_threshold / norm, max=1.0)
    d64 = d.double()
    unit = torch.nn.functional.normalize(v_cond.double().flatten(-4), dim=-1).view(v_cond.shape)
    parallel = (d64 * unit).sum(dim=_SAMPLE_DIMS, keepdim=True) * unit
    orthogonal = (d64 - parallel).to(diff.dtype)
    term = orthogonal if eta == 0 else orthogonal + eta * parallel.to(diff.dtype)
    return term, running


def _require(preds: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in preds]
    if missing:
        raise InputValidationError(
            f"the model function did not return the passes {missing} (got {sorted(preds)}).",
            "model_fn(x, t, passes) must return one velocity per requested pass name.",
        )


def combine_guidance(preds: Mapping[str, torch.Tensor], config: GuidanceConfig,
                     state: APGState = APGState()) -> tuple[torch.Tensor, APGState, dict[str, torch.Tensor]]:
    """Guided velocity from the pass outputs -> (v, new APG state, APG terms {"text"|"audio": term})."""
    passes = config.passes
    _require(preds, passes)
    v_c, s_t, s_a = preds[COND], config.text_scale, config.audio_scale
    if len(passes) == 1:
        return v_c, state, {}
    if not config.use_apg:
        if passes == (COND, DROP_AUDIO):
            return guide_single(v_c, preds[DROP_AUDIO], s_a), state, {}
        if passes == (COND, DROP_TEXT):
            return guide_single(v_c, preds[DROP_TEXT], s_t), state, {}
        return guide_cfg(v_c, preds[DROP_TEXT], preds[UNCOND], s_t, s_a), state, {}
    apg = dict(momentum=config.apg_momentum, norm_threshold=config.apg_norm_threshold, eta=config.apg_eta)
    if passes == (COND, DROP_AUDIO):
        audio, r_audio = apg_update(v_c - preds[DROP_AUDIO], v_c, state.audio, **apg)
        return v_c + (s_a - 1) * audio, APGState(state.text, r_audio), {"audio": audio}
    text, r_text = apg_update(v_c - preds[DROP_TEXT], v_c, state.text, **apg)
    if passes == (COND, DROP_TEXT):
        return v_c + (s_t - 1) * text, APGState(r_text, state.audio), {"text": text}
    audio, r_audio = apg_update(preds[DROP_TEXT] - preds[UNCOND], v_c, state.audio, **apg)
    v = v_c + (s_t - 1) * text + (s_a - 1) * audio
    return v, APGState(r_text, r_audio), {"text": text, "audio": audio}
