"""The Streaming Sampler's own checks of its settings, run first when it executes.

Why not VALIDATE_INPUTS: ComfyUI files a VALIDATE_INPUTS failure once under every input the function
takes, so one wrong value showed five times and highlighted unrelated fields. These checks raise one
E_INPUT_VALIDATION that names the one field that is wrong, before any job folder or work; ComfyUI's
own per-field min/max checks still run before the queue starts.
"""
from __future__ import annotations

from pathlib import Path

from .common import check_4n1, require

SIZE_MULTIPLE = 16
MAX_STEPS = 200
SPEAKER_WEIGHT_HINTS = ("single",)


def _int(inputs: dict, name: str) -> int:
    value = inputs.get(name)
    require(isinstance(value, int) and not isinstance(value, bool), f"{name}={value!r} is not a whole number.",
            f"Set {name} to a whole number.")
    return value


def check_sampler_settings(inputs: dict) -> None:
    """Raise InputValidationError naming the first wrong field (frame counts, size, steps, max_frames).

    Combo choices and min/max of every input are checked before this by ``common.coded_errors``."""
    chunk, context = _int(inputs, "chunk_frames"), _int(inputs, "context_frames")
    for name, value in (("chunk_frames", chunk), ("context_frames", context)):
        problem = check_4n1(name, value) if value >= 1 else f"{name}={value} must be at least 1."
        require(problem is None, problem or "", f"Change {name} as suggested.")
    require(context < chunk, f"context_frames={context} must be smaller than chunk_frames={chunk}.",
            "Use 9 context frames with 81-frame chunks.")
    steps = _int(inputs, "steps")
    require(1 <= steps <= MAX_STEPS, f"steps={steps} is outside 1..{MAX_STEPS}.",
            "Use 40 steps (4-8 with a distill LoRA).")
    require(_int_or_zero(inputs, "max_frames") >= 0, f"max_frames={inputs.get('max_frames')} is negative.",
            "Use 0 for the whole audio, or a positive frame count.")
    if inputs.get("size") == "custom":
        for name in ("width", "height"):
            value = _int(inputs, name)
            low = value - value % SIZE_MULTIPLE
            require(value >= 64, f"{name}={value} is below 64.", f"Use 64 or more for {name}.")
            require(value % SIZE_MULTIPLE == 0,
                    f"{name}={value} is not a multiple of {SIZE_MULTIPLE} (VAE 8x and patch 2x).",
                    f"Use {low} or {low + SIZE_MULTIPLE}.")


def _int_or_zero(inputs: dict, name: str) -> int:
    return 0 if inputs.get(name) is None else _int(inputs, name)


def speaker_weights_warning(model_files, num_speakers: int) -> str | None:
    """A warning when InfiniteTalk weights named "single" meet two speakers (the keys cannot tell)."""
    names = [Path(str(f)).name.lower() for f in list(model_files or [])[-1:]]  # the InfiniteTalk file
    if num_speakers == 2 and any(h in n for n in names for h in SPEAKER_WEIGHT_HINTS):
        return ("Two speakers are connected, but the InfiniteTalk weights look like the single-speaker "
                "file; lip sync of speaker 2 will be weak. Load the 'multi' InfiniteTalk weights for two "
                "speakers.")
    return None


def svi_weights_warning(model_files, mode: str) -> str | None:
    """A warning when SVI-Talk runs on audio weights other than MultiTalk's (what its LoRA was trained on)."""
    names = [Path(str(f)).name.lower() for f in list(model_files or [])[-1:]]
    if mode == "svi_talk" and names and "multitalk" not in names[0]:
        return ("mode svi_talk: the SVI-Talk LoRA was trained on MultiTalk's audio weights (multitalk.safetensors), "
                f"but the audio weights loaded are {names[0]!r}; with InfiniteTalk's it is an untested hybrid.")
    return None
