"""Errors with a stable code, a plain statement of what was wrong and how to fix it.

Every error that can reach a user (ComfyUI's UI, an API client, a CLI) is one of these. The message
starts with the code (``E_INPUT_VALIDATION: ...``) so API clients can branch on it, and ends with the
fix. They subclass the matching builtin (ValueError, MemoryError, ...) so generic handlers still work.
"""
from __future__ import annotations


def _sentence(text: str) -> str:
    """One line that ends like a sentence (messages are read in a UI, not a terminal)."""
    line = " ".join(str(text).split())
    return line if not line or line[-1] in ".!?" else line + "."


class InfiniteTalkError(Exception):
    """Base class: ``code`` is stable API, ``what`` says what was wrong, ``fix`` what to do."""

    code = "E_GENERATION"

    def __init__(self, what: str, fix: str | None = None):
        self.what = _sentence(what)
        self.fix = _sentence(fix) if fix else None
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.code}: {self.what}"
        return f"{text} Fix: {self.fix}" if self.fix else text


class InputValidationError(InfiniteTalkError, ValueError):
    """A parameter or input that cannot work (checked before any model is loaded)."""

    code = "E_INPUT_VALIDATION"


class PipelineLoadError(InfiniteTalkError, ValueError):
    """A model file that is missing, truncated, of the wrong kind or of an unknown layout."""

    code = "E_PIPELINE_LOAD"


class AudioInputError(InfiniteTalkError, ValueError):
    """Audio that cannot be decoded or used (empty, NaN, unsupported container, ...)."""

    code = "E_AUDIO"


class OutOfMemoryError(InfiniteTalkError, MemoryError):
    """The device ran out of memory; the message names the knob to turn."""

    code = "E_OOM"


class FFmpegError(InfiniteTalkError, RuntimeError):
    """ffmpeg failed to decode or encode; the message carries ffmpeg's own last lines."""

    code = "E_FFMPEG"


class GenerationError(InfiniteTalkError, RuntimeError):
    """Anything else that went wrong while generating."""

    code = "E_GENERATION"


class NonFiniteError(InfiniteTalkError, FloatingPointError):
    """A chunk's latents or pixels hold NaN/inf: it is never committed (damaged weights, a bad LoRA,
    fp16 overflow)."""

    code = "E_NONFINITE"


class JobLockedError(InfiniteTalkError, RuntimeError):
    """Another render holds the job folder's lock."""

    code = "E_JOB_LOCKED"


class JobDamagedError(InfiniteTalkError, RuntimeError):
    """A job folder's manifest, state or chunk file is damaged or not ours."""

    code = "E_JOB_DAMAGED"


class DiskError(InfiniteTalkError, OSError):
    """The disk refused a write: full, read-only, no permission, a name the file system rejects."""

    code = "E_DISK"
