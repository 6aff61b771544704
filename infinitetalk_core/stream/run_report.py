"""What a finished run tells its user, written next to the mp4: a metadata JSON and a thumbnail.

``run_metadata(jobs, extra)`` gathers, from job manifests (``JobDirectory`` or ``JobManifest``): the
parameters (the layout with settings and cost metadata, the input fingerprints), per-stage total seconds,
per chunk its output frame range in the mp4, seconds per stage, the colour correction (mean absolute
change in uint8 levels that colour matching made, and the signed mean shift per RGB channel), the seam
difference (first frame vs the previous chunk's last) and the mean difference inside it, its pass calls
and skipped forwards; one chapter per job. Chunks made before stats were recorded say ``None`` (the PNG
report, report_png.py, shows "n/a"). ``extra`` is merged in (e.g. the mp4 path, muxing seconds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

FORMAT = 1
CALLS = ("pass_calls", "skipped_calls", "refine_calls")


def _manifest(job):
    return getattr(job, "manifest", job)  # a JobDirectory or a JobManifest


def _chunk_rows(manifest, job_index: int, offset: int) -> list[dict]:
    """One row per output chunk of a job; frames are mp4 frames (``offset`` + the chunk's range)."""
    rows, start = [], 0
    cap = int(manifest.layout.get("output_frames", sum(c.frames for c in manifest.chunks)))
    for rec in manifest.chunks:
        if start >= cap:
            break
        stop = min(cap, start + rec.frames)
        stats = rec.stats or {}
        rows.append({"job": job_index, "index": rec.index, "start_frame": offset + start,
                     "stop_frame": offset + stop, "has_stats": rec.stats is not None,
                     "timings": stats.get("timings"), "colour": stats.get("colour"),
                     "seam_diff": stats.get("seam_diff"), "inside_diff": stats.get("inside_diff"),
                     **{k: stats.get(k) for k in CALLS}})
        start = stop
    return rows


def _stage_totals(chunks: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in chunks:
        for stage, seconds in (row["timings"] or {}).items():
            totals[stage] = round(totals.get(stage, 0.0) + float(seconds), 4)
    return totals


def _chapter(manifest, job_index: int, start: int, stop: int) -> dict:
    """The chapter a job is (the lead's layout["chapter"]) with its frame range in the mp4."""
    recorded = manifest.layout.get("chapter") or {}
    return {**recorded, "job": job_index, "mp4_start_frame": start, "mp4_stop_frame": stop}


def run_metadata(jobs: Iterable, extra: dict | None = None) -> dict:
    """The metadata JSON of a run over ``jobs`` (in mp4 order; JobDirectory or JobManifest)."""
    chunks, chapters, parameters, offset = [], [], [], 0
    for j, job in enumerate(jobs):
        manifest = _manifest(job)
        rows = _chunk_rows(manifest, j, offset)
        stop = rows[-1]["stop_frame"] if rows else offset
        chapters.append(_chapter(manifest, j, offset, stop))
        parameters.append({"fingerprint": manifest.fingerprint, "inputs": dict(manifest.inputs),
                           "layout": dict(manifest.layout)})
        chunks += rows
        offset = stop
    with_stats = [c for c in chunks if c["has_stats"]]
    body = {"format": FORMAT, "frames": offset, "parameters": parameters, "timings": _stage_totals(chunks),
            "chapters": chapters, "chunks": chunks,
            "skipped_forwards": {**{k: sum(c[k] or 0 for c in with_stats) for k in CALLS},
                                 "chunks_without_stats": len(chunks) - len(with_stats)}}
    extra = dict(extra or {})
    body["timings"].update(extra.pop("timings", {}))  # e.g. muxing: the combine itself
    return {**body, **extra}


def write_metadata(metadata: dict, path: str | Path) -> Path:
    """Write ``metadata`` as indented JSON (non-JSON values as strings)."""
    path = Path(path)
    path.write_text(json.dumps(metadata, indent=1, sort_keys=True, default=str))
    return path


def write_thumbnail(frame_uint8: np.ndarray, path: str | Path, max_side: int = 512) -> Path:
    """Save one uint8 frame [H, W, 3] as JPEG (.jpg/.jpeg) or PNG, no side longer than ``max_side``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame_uint8[..., :3]).astype(np.uint8), "RGB")
    image.thumbnail((max_side, max_side))
    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, "JPEG", quality=88)
    else:
        image.save(path, "PNG")
    return path
