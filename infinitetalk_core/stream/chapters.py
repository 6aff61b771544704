"""Chapters: cut one long job into independent parts at silences, scene cuts or given times.

Every chapter is its own stream (``plan_chunks(..., first_frame=start, max_frames=stop)``): its chunk 0
takes its context from the reference frame at the chapter's start, as a job's first chunk does, so
chapters do not depend on each other and can be rendered in any order, by any process or server; the
chunks inside a chapter chain as usual. A boundary is placed where a mouth is closed: in the middle of a
silence (RMS energy below ``threshold_db`` dBFS for at least ``min_silence_ms``), or at a scene cut of
the source video (the new shot gets its own reference anyway).

Specs (the Streaming Sampler's ``chapters`` input and ``post_workflow.py --chapters``):
- "" or "1": one chapter (no cut);
- "auto": a cut about every ``AUTO_CHAPTER_SECONDS`` at the nearest silence or scene cut;
- "N" (an integer >= 2): N chapters, each cut at the silence or scene cut nearest to an even split
  (an even split when there is none near: its kind is then "even");
- "61.2, 130.44": chapter start times in seconds (kind "time"); ``chapter_times_spec`` writes a plan in
  this form, so every server renders the very same boundaries.
All frames are 25 fps output frames.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputValidationError
from .plan import FPS

AUTO_CHAPTER_SECONDS = 60.0  # "auto": about one minute per chapter (a dub of an hour: 60 parts)
MIN_CHAPTER_FRAMES = 81  # at least one chunk per chapter (auto, N): shorter parts waste a reference
CUT_FACTOR = 6.0  # a scene cut: a frame difference this many times the median one (and above CUT_FLOOR)
CUT_FLOOR = 12.0  # uint8 levels of mean absolute difference


@dataclass(frozen=True)
class Chapter:
    """One chapter: global output frames [start, stop); ``kind``: why it starts there."""

    index: int
    start: int
    stop: int
    kind: str  # "start" (frame 0), "silence", "scene_cut", "time" (given) or "even" (no silence near)

    @property
    def frames(self) -> int:
        return self.stop - self.start

    def to_json(self) -> dict:
        return {"index": self.index, "start_frame": self.start, "stop_frame": self.stop, "kind": self.kind,
                "start_seconds": self.start / FPS}


def _mono(waveform, sample_rate: int) -> np.ndarray:
    w = waveform.detach().cpu().float().numpy() if hasattr(waveform, "detach") else np.asarray(waveform)
    w = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w[None]
    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise InputValidationError(f"sample rate {sample_rate!r} is not a positive integer.",
                                   "Pass the waveform's sample rate in Hz.")
    return w.astype(np.float64).mean(0)


def frame_energy_db(waveform, sample_rate: int) -> np.ndarray:
    """RMS level in dBFS of every 25 fps frame (40 ms) of the audio (last partial frame included)."""
    mono = _mono(waveform, sample_rate)
    hop = sample_rate / FPS
    count = max(1, int(np.ceil(len(mono) / hop)))
    bounds = np.round(np.arange(count + 1) * hop).astype(np.int64).clip(0, len(mono))
    squares = np.concatenate([[0.0], np.cumsum(mono * mono)])
    lengths = np.maximum(1, np.diff(bounds))
    rms = np.sqrt(np.maximum(0.0, np.diff(squares[bounds])) / lengths)
    return 20 * np.log10(np.maximum(rms, 1e-10))


def find_silences(waveform, sample_rate: int, threshold_db: float = -40.0,
                  min_silence_ms: int = 300) -> list[tuple[int, int]]:
    """Silent ranges [start, stop) in 25 fps frames: energy below ``threshold_db`` for >= min_silence_ms."""
    quiet = frame_energy_db(waveform, sample_rate) < float(threshold_db)
    need = max(1, int(np.ceil(float(min_silence_ms) / (1000 / FPS))))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= need]


def find_scene_cuts(differences: Sequence[float], times: Sequence[float] | None = None) -> list[int]:
    """Scene cuts from mean absolute frame differences (uint8 levels); ``differences[i]`` compares
    frame i with frame i−1 of the source (0 for frame 0); ``times[i]``: frame i's time in seconds
    (default: 25 fps). Returns the 25 fps output frames where a new shot starts."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 3:
        return []
    typical = float(np.median(d[1:]))
    cuts = np.flatnonzero((d > CUT_FLOOR) & (d > CUT_FACTOR * max(typical, 0.5)))
    seconds = np.asarray(times, dtype=np.float64) if times is not None else np.arange(len(d)) / FPS
    return sorted({int(round(seconds[i] * FPS)) for i in cuts if i > 0})


def _candidates(silences, scene_cuts, num_frames: int) -> list[tuple[int, str]]:
    points = [((a + b) // 2, "silence") for a, b in silences]
    points += [(int(c), "scene_cut") for c in scene_cuts]
    return sorted((f, k) for f, k in points if 0 < f < num_frames)


def _auto_starts(points, num_frames: int, target: int, minimum: int) -> list[tuple[int, str]]:
    starts, previous = [], 0
    while True:
        usable = [(f, k) for f, k in points if f - previous >= minimum and num_frames - f >= minimum]
        if not usable or num_frames - previous < target + minimum:
            return starts
        best = min(usable, key=lambda p: abs(p[0] - previous - target))
        starts.append(best)
        previous = best[0]
        points = [p for p in points if p[0] > previous]


def _even_starts(points, num_frames: int, count: int, minimum: int) -> list[tuple[int, str]]:
    length = num_frames / count
    starts, previous = [], 0
    for i in range(1, count):
        ideal = round(i * length)
        near = [(f, k) for f, k in points if abs(f - ideal) <= length / 2 and f - previous >= minimum
                and num_frames - f >= minimum * (count - i)]
        best = min(near, key=lambda p: abs(p[0] - ideal)) if near else (max(ideal, previous + 1), "even")
        starts.append(best)
        previous = best[0]
    return starts


def _time_starts(spec: str, num_frames: int) -> list[tuple[int, str]]:
    try:
        seconds = [float(part) for part in re.split(r"[,;\s]+", spec.strip()) if part]
    except ValueError:
        raise InputValidationError(f"chapters={spec!r} is not a list of times.", _SPEC_HELP) from None
    frames = [round(s * FPS) for s in seconds if round(s * FPS) != 0]
    bad = [s for s in seconds if not np.isfinite(s) or not 0 <= round(s * FPS) < num_frames]
    if bad or frames != sorted(set(frames)):
        raise InputValidationError(
            f"chapters={spec!r}: chapter starts must be increasing times inside the audio "
            f"(0 to {num_frames / FPS:.2f} s){f'; {bad[0]} is not' if bad else ''}.", _SPEC_HELP)
    return [(f, "time") for f in frames]


_SPEC_HELP = ("Leave chapters empty (one chapter), or write auto, a number of chapters (e.g. 4), or chapter "
              "start times in seconds separated by commas (e.g. 61.2, 130.4).")


def plan_chapters(spec: str, num_frames: int, silences: Sequence[tuple[int, int]] = (),
                  scene_cuts: Sequence[int] = (), min_chapter_frames: int = MIN_CHAPTER_FRAMES,
                  auto_seconds: float = AUTO_CHAPTER_SECONDS) -> list[Chapter]:
    """The chapters of a job of ``num_frames`` output frames for ``spec`` (see the module docstring)."""
    text = str(spec or "").strip().lower()
    points = _candidates(silences, scene_cuts, num_frames)
    minimum = min(int(min_chapter_frames), max(1, num_frames // 2))
    if text in ("", "1"):
        starts = []
    elif text == "auto":
        starts = _auto_starts(points, num_frames, round(auto_seconds * FPS), minimum)
    elif text.isdigit():
        count = int(text)
        if count < 1 or count * minimum > num_frames:
            raise InputValidationError(
                f"chapters={spec!r}: {count} chapters do not fit in {num_frames / FPS:.2f} s of audio "
                f"(each needs at least {minimum / FPS:.2f} s).", "Ask for fewer chapters, or use auto.")
        starts = _even_starts(points, num_frames, count, minimum)
    else:
        starts = _time_starts(text, num_frames)
    bounds = [(0, "start"), *starts]
    stops = [f for f, _ in starts] + [num_frames]
    return [Chapter(i, f, stop, kind) for i, ((f, kind), stop) in enumerate(zip(bounds, stops))]


def chapter_times_spec(chapters: Sequence[Chapter]) -> str:
    """The explicit-times spec of ``chapters`` ("1" for a single one): exact, as 1/25 s = 0.04 s."""
    return ", ".join(f"{c.start / FPS:.2f}" for c in chapters[1:]) or "1"


def chapter_at(chapters: Sequence[Chapter], number: int) -> Chapter:
    """Chapter ``number`` counted from 1 (the node's ``chapter`` input)."""
    if not 1 <= number <= len(chapters):
        raise InputValidationError(f"chapter={number}, but this job has {len(chapters)} chapter(s).",
                                   f"Use 1..{len(chapters)}, or 0 to render every chapter one after another.")
    return chapters[number - 1]
