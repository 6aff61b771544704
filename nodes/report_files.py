"""Video Combine's companions of the mp4: ``<stem>.json`` (run metadata), ``<stem>.jpg`` (a thumbnail: the
middle frame, more telling than the first, which is usually the reference image) and, for a sampler's
frames, ``<stem>_report.png`` (stream/report_png.py). All written next to the mp4, inside its folder."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _middle_frame(source) -> np.ndarray | None:
    """The middle output frame [H, W, 3] uint8, decoding one chunk (a job) or one image (an IMAGE)."""
    middle, jobs = source.frame_count // 2, getattr(source, "jobs", None)
    if source.frame_count == 0:
        return None
    if not jobs:
        images = getattr(source, "images", None)
        if images is None:
            return next(source.iter_uint8(1))[0]
        return images[middle, ..., :3].detach().float().cpu().mul(255).round().clamp(0, 255).byte().numpy()
    for job in jobs:
        start = 0
        for rec in job.manifest.chunks:
            if middle < min(start + rec.frames, job.output_frames):
                return np.asarray(job.read_chunk(rec)[middle - start])
            start += rec.frames
        middle -= job.output_frames
    return None


def write_report_files(source, mp4: Path, subfolder: str, mux_seconds: float) -> list[dict]:
    """Write the JSON, thumbnail and (with jobs) PNG report next to ``mp4``; returns ui entries for them.
    A failure is a warning: the mp4 is what matters."""
    from ..infinitetalk_core.stream.report_png import write_report_png
    from ..infinitetalk_core.stream.run_report import run_metadata, write_metadata, write_thumbnail

    mp4, entries = Path(mp4), []
    jobs = list(getattr(source, "jobs", None) or [])
    extra = {"mp4": mp4.name, "width": source.width, "height": source.height, "fps": float(source.fps),
             "timings": {"muxing": round(mux_seconds, 4)}}
    try:
        metadata = run_metadata(jobs, extra)
        if not jobs:
            metadata["frames"] = source.frame_count
        files = [(write_metadata(metadata, mp4.with_suffix(".json")), "metadata")]
        frame = _middle_frame(source)
        if frame is not None:
            files.append((write_thumbnail(frame, mp4.with_suffix(".jpg")), "thumbnail"))
        if jobs:
            files.append((write_report_png(metadata, mp4.with_name(mp4.stem + "_report.png")), "report"))
    except Exception as exc:  # noqa: BLE001 - a report must never cost the user the mp4
        log.warning("Video Combine: the run report next to %s was not written (%s)", mp4.name, exc)
        return entries
    return [{"filename": f.name, "subfolder": subfolder, "type": "output", "kind": kind} for f, kind in files]
