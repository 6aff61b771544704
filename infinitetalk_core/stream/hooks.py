"""Callbacks the host plugs into a streaming run: progress with ETA, previews, interrupts.

- ``on_step(StepProgress)`` after every denoising step (ComfyUI: progress bar + latent preview);
- ``on_stage(StageProgress)`` when a chunk enters a stage (encoding_references, sampling, decoding);
- ``on_chunk(ChunkProgress)`` after every finished chunk, once its consumer has committed it, with its
  kept frames (a video preview);
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
    pass_calls: int = 0  # guidance-pass evaluations of the chunk (steps x passes)
    skipped_calls: int = 0  # of those, answered by the step cache
    refine_calls: int = 0  # extra pass calls of the context refinement before the chunk


@dataclass(frozen=True)
class StageProgress:
    stage: str  # one of STAGES
    chunk: int  # 0-based chunk being worked on
    num_chunks: int
    eta_seconds: float | None


STAGES = ("preparing", "encoding_references", "refining_context", "sampling", "decoding", "muxing", "done")


@dataclass(frozen=True)
class StreamHooks:
    on_step: Callable[[StepProgress], None] | None = None
    on_chunk: Callable[[ChunkProgress], None] | None = None
    check_interrupt: Callable[[], bool] | None = None
    on_stage: Callable[[StageProgress], None] | None = None

    def stage(self, stage: str, chunk: int, num_chunks: int, eta: float | None) -> None:
        if self.on_stage is not None:
            self.on_stage(StageProgress(stage, chunk, num_chunks, eta))


class ProgressClock:
    """Progress and a steady ETA over the chunks this run generates.

    The ETA counts the remaining denoising steps at the median of the recent step times (a slow
    first step or a model load does not swing it) plus the per-chunk overhead measured so far
    (conditioning, decode, colour, commit: what "ETA 0 s" during the last decode left out); no ETA
    until three steps or one chunk have been timed. The shown
    value counts down between updates and moves only a quarter of the way to each new estimate.
    """

    WINDOW = 24  # recent step times kept

    def __init__(self, first_chunk: int, num_chunks: int, steps: int):
        self.first_chunk, self.num_chunks, self.steps = first_chunk, num_chunks, steps
        self.total = max(1, (num_chunks - first_chunk) * steps)
        self.start = time.perf_counter()
        self._step_times: list[float] = []
        self._overheads: list[float] = []
        self._chunk_start = self._last_mark = self.start
        self._chunk_stepping = 0.0
        self._shown: tuple[float, float] | None = None  # (eta, when)

    def done(self, chunk: int, step: int) -> int:
        return (chunk - self.first_chunk) * self.steps + step

    def fraction(self, chunk: int, step: int) -> float:
        return (self.done(chunk, step) + self.first_chunk * self.steps) / max(1, self.num_chunks * self.steps)

    def start_sampling(self) -> None:
        self._last_mark = time.perf_counter()

    def step_done(self) -> None:
        now = time.perf_counter()
        self._step_times = (self._step_times + [now - self._last_mark])[-self.WINDOW:]
        self._chunk_stepping += now - self._last_mark
        self._last_mark = now

    def chunk_done(self, chunk: int) -> None:
        now = time.perf_counter()
        overhead = max(0.0, now - self._chunk_start - self._chunk_stepping)
        self._overheads = (self._overheads + [overhead])[-8:]
        self._chunk_start, self._chunk_stepping = now, 0.0

    def _median_step(self) -> float:
        times = sorted(self._step_times)
        return times[(len(times) - 1) // 2] if times else 0.0

    def raw_eta(self, chunk: int, step: int) -> float | None:
        """Seconds left from (chunk, step) without smoothing; None until a step has been timed."""
        if len(self._step_times) < 3 and not self._overheads:
            return None  # one or two timings (a warm-up step) would say nothing
        steps_left = max(0, self.total - self.done(chunk, step))
        chunks_left = max(0, self.num_chunks - chunk)
        overhead = sum(self._overheads) / len(self._overheads) if self._overheads else None
        if overhead is None and steps_left == 0:
            return None  # only the unmeasured decode is left
        return steps_left * self._median_step() + chunks_left * (overhead or 0.0)

    def eta(self, chunk: int, step: int) -> float | None:
        raw = self.raw_eta(chunk, step)
        if raw is None:
            return None
        now = time.perf_counter()
        if self._shown is None:
            shown = raw
        else:
            counted = max(0.0, self._shown[0] - (now - self._shown[1]))
            shown = counted + 0.25 * (raw - counted)
        self._shown = (shown, now)
        return shown


class StageTimer:
    """Seconds per stage of a run, for progress events: ``enter(stage)`` closes the stage in progress.

    ``enter`` returns the seconds of the stage it closed (None for the first); ``timings()`` the total
    seconds per stage so far, the stage in progress included (a running view for the frontend).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._stage: str | None = None
        self._since = clock()
        self._totals: dict[str, float] = {}

    def enter(self, stage: str) -> float | None:
        """Start ``stage`` now (re-entering the same stage is a no-op returning None)."""
        if stage == self._stage:
            return None
        now, previous = self._clock(), self._stage
        seconds = None if previous is None else now - self._since
        if previous is not None:
            self._totals[previous] = self._totals.get(previous, 0.0) + seconds
        self._stage, self._since = stage, now
        return seconds

    def timings(self) -> dict[str, float]:
        """{stage: total seconds} rounded to milliseconds, the stage in progress counted up to now."""
        totals = dict(self._totals)
        if self._stage is not None:
            totals[self._stage] = totals.get(self._stage, 0.0) + self._clock() - self._since
        return {k: round(v, 3) for k, v in totals.items()}
