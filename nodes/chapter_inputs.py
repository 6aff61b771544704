"""The Streaming Sampler's chapter inputs -> the core's chapters (silences of the audio, scene cuts of a
source video) and the part of the job one queue renders."""
from __future__ import annotations

import numpy as np
import torch

from ..infinitetalk_core.stream.chapters import (Chapter, chapter_at, find_scene_cuts, find_silences,
                                                 plan_chapters)
from ..infinitetalk_core.stream.job_files import MAX_NAME
from ..infinitetalk_core.stream.plan import FPS, plan_chunks
from .common import require

CUT_SIZE = (36, 64)  # scene cuts are found on tiny frames: a cut changes the whole picture
DETECTING = ("auto",)


def _needs_detection(spec: str) -> bool:
    return spec in DETECTING or spec.isdigit() and spec != "1"


def _tiny_frames(refs, stop_seconds: float):
    """(uint8 [h, w, 3] frames, their times) of the source up to ``stop_seconds``, one at a time."""
    count = min(refs.frame_count, int(np.ceil(stop_seconds * float(refs.fps))) + 1)
    if refs.video_path is not None:
        from ..infinitetalk_core.video.reader import iter_video_frames

        for i, frame in enumerate(iter_video_frames(refs.video_path, size=CUT_SIZE, stop=count)):
            yield frame, i / float(refs.fps)
        return
    for i in range(count):
        image = refs.images[i:i + 1, ..., :3].permute(0, 3, 1, 2).float()
        tiny = torch.nn.functional.interpolate(image, size=CUT_SIZE, mode="area")[0]
        yield (tiny.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy(), i / float(refs.fps)


def source_scene_cuts(refs, num_frames: int) -> list[int]:
    """Scene cuts of a video source inside the audio's time (an image has none)."""
    if refs.frame_count < 3:
        return []
    differences, times, previous = [], [], None
    for frame, seconds in _tiny_frames(refs, num_frames / FPS):
        current = frame.astype(np.int16)
        differences.append(0.0 if previous is None else float(np.abs(current - previous).mean()))
        times.append(seconds)
        previous = current
    return [c for c in find_scene_cuts(differences, times) if c < num_frames]


def job_chapters(inputs: dict, feats, refs) -> list[Chapter]:
    """Every chapter of the whole audio (a cap only shortens the last ones: boundaries stay put)."""
    spec = str(inputs.get("chapters") or "").strip().lower()
    silences, cuts = [], []
    if _needs_detection(spec):
        waveform, rate = feats.mix["waveform"], int(feats.mix["sample_rate"])
        silences = find_silences(waveform, rate, inputs.get("silence_threshold_db", -40.0),
                                 inputs.get("min_silence_ms", 300))
        cuts = source_scene_cuts(refs, feats.num_frames)
    return plan_chapters(spec, feats.num_frames, silences, cuts)


def chapters_to_render(chapters: list[Chapter], number: int, cap: int | None) -> list[Chapter]:
    """Chapter ``number`` (from 1) or all (0), cut at the cap (chapters past it are left out)."""
    chosen = chapters if not number else [chapter_at(chapters, number)]
    end = chapters[-1].stop if not cap else min(cap, chapters[-1].stop)
    kept = [Chapter(c.index, c.start, min(c.stop, end), c.kind) for c in chosen if c.start < end]
    require(kept, f"chapter {number} starts at {chosen[0].start / FPS:.2f} s, after max_frames={cap}.",
            "Raise max_frames (or set it to 0), or pick an earlier chapter.")
    return kept


def chapter_plan(p, chapter) -> object:
    """The stream of one chapter: from its start (its own reference) to its end (or the cap)."""
    if len(p.chapters) == 1:
        return p.plan
    return plan_chunks(p.plan.num_audio_frames, p.plan.chunk_frames, p.plan.context_frames,
                       chapter.stop, first_frame=chapter.start)


def chapter_layout(p, chapter) -> dict:
    """What a chapter job's manifest reports of the chapters (none for a job of one chapter)."""
    if len(p.chapters) == 1:
        return {}
    return {"chapter": {**chapter.to_json(), "count": len(p.chapters)},
            "chapters": [c.to_json() for c in p.chapters]}


def chapter_job_name(p, chapter) -> str:
    """The job folder name of a chapter: the user's name + "-chapter02" (automatic names differ anyway)."""
    if not p.name or len(p.chapters) == 1:
        return p.name
    return f"{p.name[:MAX_NAME - 12]}-chapter{chapter.index + 1:02d}"
