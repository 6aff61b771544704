"""Callbacks the host plugs into a streaming run: progress with ETA, previews, interrupts.

- ``on_step(StepProgress)`` after every denoising step (ComfyUI: progress bar + latent preview);
- ``on_chunk(ChunkProgress)`` after every finished chunk, with its kept frames (a video preview);
- ``check_interrupt()`` before every step: return True (or raise your own exception, e.g. ComfyUI's
  ``InterruptProcessingException``) to stop. True raises ``GenerationInterrupted``.

An interrupt stops between steps; the chunk in progress is dropped and the job directory keeps every
chunk finished so far, so running again with the same inputs resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InfiniteTalkError


class GenerationInterrupted(InfiniteTalkError):
    """The host asked to stop. Finished chunks are kept; rerun with the same inputs to resume."""

    code = "E_INTERRUPTED"


@dataclass(frozen=True)
class StepProgress:
    chunk: int  # 0-based chunk index
    num_chunks: int
    step: int  # 1-based: steps finished in this chunk
    steps: int
    fraction: float  # of the whole run's steps, 0..1
    eta_seconds: float | None  # None until one step of this run has been timed
    denoised: torch.Tensor  # x0 estimate of the chunk [16, T, h, w] (for latent previews)


@dataclass(frozen=True)
class ChunkProgress:
    chunk: int
    num_chunks: int
    frames: torch.Tensor  # the chunk's kept frames [3, n, H, W] in [-1, 1] (after colour correction)
    eta_seconds: float | None


@dataclass(frozen=True)
class StreamHooks:
    on_step: Callable[[StepProgress], None] | None = None
    on_chunk: Callable[[ChunkProgress], None] | None = None
    check_interrupt: Callable[[], bool] | None = None


class ProgressClock:
    """Steps done vs. total over the chunks this run generates; ETA from the mean step time so far."""

    def __init__(self, first_chunk: int, num_chunks: int, steps: int):
        self.first_chunk, self.num_chunks, self.steps = first_chunk, num_chunks, steps
        self.total = max(1, (num_chunks - first_chunk) * steps)
        self.start = time.perf_counter()

    def done(self, chunk: int, step: int) -> int:
        return (chunk - self.first_chunk) * self.steps + step

    def fraction(self, chunk: int, step: int) -> float:
        return (self.done(chunk, step) + self.first_chunk * self.steps) / max(1, self.num_chunks * self.steps)

    def eta(self, chunk: int, step: int) -> float | None:
        done = self.done(chunk, step)
        if done <= 0:
            return None
        return (time.perf_counter() - self.start) / done * (self.total - done)
