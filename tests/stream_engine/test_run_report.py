"""Run reports: per-chunk stats in the job manifest (kept on resume, absent in old jobs), the metadata
JSON, the thumbnail and the PNG report (1 chunk, 1000+ chunks, chunks without stats)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.job import JobDirectory, JobFingerprint
from infinitetalk_core.stream.job_manifest import ChunkRecord, JobManifest
from infinitetalk_core.stream.render import commit_chunks
from infinitetalk_core.stream.report_png import write_report_png
from infinitetalk_core.stream.run_report import run_metadata, write_thumbnail

PRINT = JobFingerprint({"audio": "a", "parameters": "p"})
LAYOUT = {"num_chunks": 3, "output_frames": 12, "height": 64, "width": 64, "fps": 25}


def _smooth(n: int, start: int) -> np.ndarray:
    """Frames drifting by one level per frame from ``start``: a small, steady inside difference."""
    ramp = np.arange(64, dtype=np.int16)[None, :, None, None]
    return np.clip(ramp + start + np.arange(n)[:, None, None, None], 0, 255).astype(np.uint8) \
        .repeat(64, 2).repeat(3, 3)


def _stats(i: int) -> dict:
    return {"timings": {"sampling": 1.0 + i, "decoding": 0.5},
            "colour": {"mean_abs": 2.0, "mean_rgb": [0, 0, 0]},
            "pass_calls": 6, "skipped_calls": 2, "refine_calls": 0}


def _job(path, jump: int = 0) -> JobDirectory:
    job = JobDirectory.open(path, PRINT, LAYOUT)
    for i in range(3):
        frames = _smooth(4, 4 * i + (jump if i == 2 else 0))
        job.commit_chunk(i, frames, {"x": torch.zeros(1)}, stats=_stats(i))
    return job


def test_the_seam_statistic_stands_out_where_a_chunk_jumps(tmp_path):
    job = _job(tmp_path / "job", jump=80)
    chunks = [c.stats for c in job.manifest.chunks]
    assert chunks[0]["seam_diff"] is None and chunks[0]["inside_diff"] > 0
    assert chunks[1]["seam_diff"] < 2 * chunks[1]["inside_diff"] + 2  # a smooth seam
    assert chunks[2]["seam_diff"] > 20 * chunks[2]["inside_diff"]  # the jump
    job.close()


def test_stats_survive_resume_and_a_resumed_seam_reads_the_previous_chunk(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    job.commit_chunk(0, _smooth(4, 0), {"x": torch.zeros(1)}, stats=_stats(0))
    job.close()
    again = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)  # no cached last frame: read from disk
    again.commit_chunk(1, _smooth(4, 100), {"x": torch.zeros(1)}, stats=_stats(1))
    body = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert body["chunks"][0]["stats"]["timings"] == {"sampling": 1.0, "decoding": 0.5}
    assert body["chunks"][1]["stats"]["seam_diff"] > 50
    again.close()


def test_old_manifests_load_unchanged_and_report_na(tmp_path):
    record = ChunkRecord(0, 4, "chunks/00000.mkv", "f" * 64, 10, "c" * 64, "s" * 64)
    manifest = JobManifest("d", {"audio": "a"}, dict(LAYOUT, num_chunks=1, output_frames=4), [record])
    text = manifest.to_json()
    assert "stats" not in text and JobManifest.from_json(text, "m").to_json() == text
    metadata = run_metadata([JobManifest.from_json(text, "m")], {"timings": {"muxing": 0.1}})
    assert metadata["chunks"][0]["timings"] is None
    assert metadata["skipped_forwards"]["chunks_without_stats"] == 1
    assert metadata["timings"] == {"muxing": 0.1}
    image = Image.open(write_report_png(metadata, tmp_path / "old.png"))
    assert image.size[0] == 1000


def test_metadata_and_report_of_a_job(tmp_path):
    job = _job(tmp_path / "job", jump=80)
    metadata = run_metadata([job], {"mp4": "x.mp4", "timings": {"muxing": 0.25}})
    json.dumps(metadata)
    assert [(c["start_frame"], c["stop_frame"]) for c in metadata["chunks"]] == [(0, 4), (4, 8), (8, 12)]
    assert metadata["timings"] == {"sampling": 6.0, "decoding": 1.5, "muxing": 0.25}
    assert metadata["skipped_forwards"] == {"pass_calls": 18, "skipped_calls": 6, "refine_calls": 0,
                                            "chunks_without_stats": 0}
    assert metadata["chapters"][0]["mp4_stop_frame"] == 12 and metadata["parameters"][0]["layout"] == LAYOUT
    image = Image.open(write_report_png(metadata, tmp_path / "r.png"))
    assert image.size == (1000, 660)
    pixels = np.asarray(image.convert("RGB"))
    assert (np.abs(pixels.astype(int) - (210, 40, 40)).sum(-1) == 0).sum() > 50  # the seam bar is drawn
    job.close()


def test_the_report_bins_thousands_of_chunks_and_the_thumbnail_decodes(tmp_path):
    rows = [{"index": i, "timings": None if i % 7 == 0 else {"sampling": 1.0}, "colour": None,
             "seam_diff": float(i % 50), "inside_diff": 1.0, "start_frame": 0, "stop_frame": 0}
            for i in range(1500)]
    image = Image.open(write_report_png({"chunks": rows, "frames": 1500 * 80}, tmp_path / "big.png"))
    assert image.size == (1000, 660)
    thumb = Image.open(write_thumbnail(_smooth(1, 0)[0], tmp_path / "t.jpg"))
    assert thumb.format == "JPEG" and thumb.size == (64, 64)


def test_generated_chunks_carry_stage_timings_and_colour(make_inputs, tmp_path):
    inputs = make_inputs(30, color_method="lab")
    plan = inputs.plan()
    results = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    for r in results:
        assert {"encoding_references", "sampling", "decoding", "colour", "post"} <= set(r.stages)
        assert r.colour is not None and r.colour["mean_abs"] >= 0 and len(r.colour["mean_rgb"]) == 3
    layout = {"num_chunks": plan.num_chunks, "output_frames": plan.output_frames, "height": 32, "width": 32}
    job = commit_chunks(JobDirectory.open(tmp_path / "job", PRINT, layout), iter(results))
    assert all(c.stats["pass_calls"] == r.pass_calls for c, r in zip(job.manifest.chunks, results))
    assert job.manifest.chunks[1].stats["seam_diff"] is not None
    job.close()
