"""Shared node plumbing: type names, the category, error translation, preview images.

Nothing here imports ComfyUI or the heavy parts of the core, so ComfyUI's start-up stays fast.
"""
from __future__ import annotations

from collections.abc import Mapping

import errno
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch

from ..infinitetalk_core.errors import (
    GenerationError,
    InfiniteTalkError,
    InputValidationError,
    OutOfMemoryError,
)

log = logging.getLogger(__name__)
RESUMABLE_STAGES = ("generating the video", "writing the mp4")  # where finished chunks exist
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EIO,
               errno.EILSEQ, errno.EINVAL}

CATEGORY = "InfiniteTalk"

# Our own socket types (prefixed so they never clash with other packs).
MODEL_TYPE = "INFINITETALK_MODEL"
WAV2VEC_TYPE = "INFINITETALK_WAV2VEC"
AUDIO_FEATURES_TYPE = "INFINITETALK_AUDIO_FEATURES"
REFERENCES_TYPE = "INFINITETALK_REFERENCES"
FRAMES_TYPE = "INFINITETALK_FRAMES"

OOM_FIX = (
    "Lower the resolution (the 480 bucket, or a smaller width/height), shorten chunk_frames "
    "(e.g. 49 instead of 81), store the DiT in fp8 (weight_dtype fp8_e4m3fn), or let ComfyUI offload "
    "more (start it with --lowvram or --reserve-vram). The run is resumable: queue it again."
)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def translate_error(exc: Exception, stage: str) -> InfiniteTalkError:
    """Any exception -> one of our coded errors (OOM gets the knobs to turn)."""
    if isinstance(exc, InfiniteTalkError):
        return exc
    if _is_oom(exc):
        return OutOfMemoryError(f"Out of memory while {stage}: {str(exc).splitlines()[0][:200]}", OOM_FIX)
    if isinstance(exc, FileNotFoundError):
        return GenerationError(f"A file was not found while {stage}: {exc.filename or exc}.",
                               "Check that the file exists (a model, input or job file moved or deleted?).")
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS or \
            (isinstance(exc, ValueError) and "null byte" in str(exc).lower()):
        from ..infinitetalk_core.stream.job_files import disk_errors

        try:
            with disk_errors(stage):
                raise exc
        except InfiniteTalkError as mapped:
            return mapped
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return GenerationError(
        f"Unexpected {type(exc).__name__} while {stage}: {first_line}.",
        "This is a bug in the node pack: please report it with the console log (the full traceback is "
        "there)." + (" Finished chunks are kept; queue again to resume." if stage in RESUMABLE_STAGES else ""),
    )


def coded_errors(stage: str) -> Callable:
    """Decorator for node entry points: every Exception leaves as a coded InfiniteTalkError.

    BaseExceptions (ComfyUI's interrupt, KeyboardInterrupt) pass through untouched.
    """

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                _check_inputs(signature, args, kwargs)
                return fn(*args, **kwargs)
            except InfiniteTalkError:
                raise
            except Exception as exc:
                raise translate_error(exc, stage) from exc

        return run

    return wrap


def _check_inputs(signature: inspect.Signature, args: tuple, kwargs: dict) -> None:
    """The node's own INPUT_TYPES against what it was called with (see input_checks.py)."""
    node = args[0] if args else None
    if not hasattr(type(node), "INPUT_TYPES"):
        return
    from .input_checks import check_node_inputs

    bound = dict(signature.bind_partial(*args, **kwargs).arguments)
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:  # sample(self, **inputs)
            bound.update(bound.pop(name, {}))
    check_node_inputs(type(node).INPUT_TYPES(), bound, _custom_types(), getattr(node, "OWN_INPUT_CHECKS", ()))


def _custom_types() -> dict[str, type]:
    from .audio import AudioFeatures
    from .loaders import InfiniteTalkModel, Wav2VecEncoder
    from .references import ReferenceSource

    return {MODEL_TYPE: InfiniteTalkModel, WAV2VEC_TYPE: Wav2VecEncoder, AUDIO_FEATURES_TYPE: AudioFeatures,
            REFERENCES_TYPE: ReferenceSource}


def require(condition: bool, what: str, fix: str) -> None:
    if not condition:
        raise InputValidationError(what, fix)


def check_4n1(name: str, value: int) -> str | None:
    """None if ``value`` is 4n+1, else a message naming the nearest valid values."""
    if (value - 1) % 4 == 0:
        return None
    lower = value - (value - 1) % 4
    return f"{name}={value} is not 4n+1 (the Wan VAE packs 1+4n frames into 1+n latents); use {lower} or {lower + 4}."


def validation_message(exc: InfiniteTalkError) -> str:
    """VALIDATE_INPUTS returns a string: keep the stable code in front."""
    return str(exc)


def first_image_to_pil(images: torch.Tensor, max_side: int = 512):
    """IMAGE [B, H, W, 3] in [0, 1] -> PIL image of the last frame (for progress previews)."""
    from PIL import Image

    frame = images[-1].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    img = Image.fromarray(frame)
    img.thumbnail((max_side, max_side))
    return img


def comfy_audio(audio: Any) -> tuple[torch.Tensor, int]:
    """ComfyUI AUDIO dict -> (waveform [B, C, T] float, sample_rate); clear error otherwise."""
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        from ..infinitetalk_core.errors import AudioInputError

        raise AudioInputError(
            f"Expected a ComfyUI AUDIO dict with 'waveform' and 'sample_rate', got {type(audio).__name__}.",
            "Connect a LoadAudio (or any node with an AUDIO output).",
        )
    return audio["waveform"], int(audio["sample_rate"])
