"""Reference frame per chunk: which source frame conditions each chunk (CLIP + y frame 0).

Image input: the same image for every chunk (``source_frames=1`` gives index 0 everywhere).

Video input (V2V dubbing): the reference implementation takes source frame k·(F−M) for chunk k as if
the source were 25 fps, clamped to the last frame. We select by *time* instead, so any frame rate works:

    t      = anchor_frame / 25                          (seconds; the anchor depends on the strategy)
    index  = floor(t · source_fps + 1e-6)               (the source frame on screen at time t)

i.e. the frame whose display interval [i/fps, (i+1)/fps) contains t; the 1e-6 guards float rounding
when t·fps is an integer (at 25 fps, index == anchor_frame exactly, the reference's index).

Strategies (the anchor):
- "chunk_start": the chunk's first global frame k·(F−M) (the reference's choice, default);
- "chunk_center": the chunk's middle frame k·(F−M) + (F−1)//2;
- "first_frame": source frame 0 for every chunk (the original image-style conditioning).

Audio longer than the video (index >= source_frames):
- "hold": the last frame (reference behaviour); "loop": index mod n;
- "pingpong": forwards then backwards, period 2(n−1) (0,1,…,n−1,n−2,…,1,0,1,…).

The first chunk's first context latent is VAE(its reference frame), as in the reference; with
"chunk_start" that is the source frame at time 0.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal, Sequence

from ..errors import InputValidationError
from .plan import FPS, ChunkPlan, StreamPlan

ReferenceStrategy = Literal["chunk_start", "chunk_center", "first_frame"]
OverflowMode = Literal["hold", "loop", "pingpong"]
REFERENCE_STRATEGIES: tuple[str, ...] = ("chunk_start", "chunk_center", "first_frame")
OVERFLOW_MODES: tuple[str, ...] = ("hold", "loop", "pingpong")
_EPS = 1e-6  # absorbs float error of t·fps when it should be an integer (e.g. 72/25·29.97 vs 30000/1001)
MAX_SOURCE_FPS = 1000.0


def source_index_at_time(seconds: float, source_fps: float | Fraction) -> int:
    """Index of the source frame on screen at ``seconds`` in a video of ``source_fps`` (frame 0 before
    the start: a continued clip's context frames come before the source's time 0)."""
    return max(0, int(math.floor(float(seconds) * float(source_fps) + _EPS)))


def wrap_frame_index(index: int, source_frames: int, overflow: OverflowMode = "hold") -> int:
    """Map any index >= 0 into [0, source_frames) with the given overflow rule."""
    if index < source_frames:
        return index
    if overflow == "hold" or source_frames == 1:
        return source_frames - 1
    if overflow == "loop":
        return index % source_frames
    period = 2 * (source_frames - 1)
    phase = index % period
    return phase if phase < source_frames else period - phase


def _anchor_frame(chunk: ChunkPlan, chunk_frames: int, strategy: str) -> int:
    if strategy == "chunk_start":
        return chunk.start
    if strategy == "chunk_center":
        return chunk.start + (chunk_frames - 1) // 2
    return 0


def _validate(source_frames: int, source_fps: float | Fraction, strategy: str, overflow: str) -> None:
    if isinstance(source_frames, bool) or not isinstance(source_frames, int) or source_frames < 1:
        raise InputValidationError(
            f"source_frames must be a positive integer, got {source_frames!r}.",
            "Pass the number of frames in the source video (1 for an image).",
        )
    try:
        fps = float(source_fps)
    except (TypeError, ValueError):
        fps = float("nan")
    if not (0.0 < fps <= MAX_SOURCE_FPS):
        raise InputValidationError(
            f"source_fps must be a positive frame rate up to {MAX_SOURCE_FPS:g}, got {source_fps!r}.",
            "Pass the video's real frame rate (e.g. 25, 29.97 or Fraction(30000, 1001)).",
        )
    if strategy not in REFERENCE_STRATEGIES:
        raise InputValidationError(
            f"unknown reference strategy {strategy!r}.", f"Use one of {', '.join(REFERENCE_STRATEGIES)}."
        )
    if overflow not in OVERFLOW_MODES:
        raise InputValidationError(
            f"unknown overflow mode {overflow!r}.", f"Use one of {', '.join(OVERFLOW_MODES)}."
        )


def reference_frame_for_chunk(
    chunk: ChunkPlan,
    chunk_frames: int,
    source_frames: int,
    source_fps: float | Fraction = FPS,
    strategy: ReferenceStrategy = "chunk_start",
    overflow: OverflowMode = "hold",
) -> int:
    """Source frame index (0 <= i < source_frames) that conditions ``chunk``."""
    _validate(source_frames, source_fps, strategy, overflow)
    return _source_frame(_anchor_frame(chunk, chunk_frames, strategy), source_frames, source_fps, overflow)


def _source_frame(global_frame: int, source_frames: int, source_fps, overflow: str) -> int:
    """The source frame on screen at global (25 fps) frame ``global_frame``, wrapped past the end."""
    seconds = Fraction(global_frame, FPS)
    return wrap_frame_index(source_index_at_time(seconds, source_fps), source_frames, overflow)


def source_indices_for_chunk(
    chunk: ChunkPlan,
    source_frames: int,
    source_fps: float | Fraction = FPS,
    overflow: OverflowMode = "hold",
) -> list[int]:
    """The source frame on screen at each of ``chunk``'s frames (global frame g at time g/25), wrapped
    past the source's end like the reference frames: what a dub keeps or starts from, frame by frame."""
    _validate(source_frames, source_fps, "chunk_start", overflow)
    return [_source_frame(g, source_frames, source_fps, overflow) for g in range(chunk.start, chunk.stop)]


def reference_frame_indices(
    plan: StreamPlan,
    source_frames: int,
    source_fps: float | Fraction = FPS,
    strategy: ReferenceStrategy = "chunk_start",
    overflow: OverflowMode = "hold",
) -> list[int]:
    """Reference source-frame index for every chunk of ``plan`` (length plan.num_chunks)."""
    return [
        reference_frame_for_chunk(c, plan.chunk_frames, source_frames, source_fps, strategy, overflow)
        for c in plan.chunks
    ]


def source_frames_needed(indices: Sequence[int]) -> list[int]:
    """Sorted distinct source frames a run needs (lets a reader decode only those)."""
    return sorted(set(indices))
