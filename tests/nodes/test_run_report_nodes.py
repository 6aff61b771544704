"""Stage timings in the Streaming Sampler's progress events, and Video Combine's companions of the mp4
(<stem>.json, <stem>.jpg, <stem>_report.png) with the plain-torch host."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pack_loader import sibling_module  # noqa: E402

graph_run = sibling_module(__file__, "test_graph_run")
graph = graph_run.graph  # the fixture
CHUNK_STAGES = ("encoding_references", "sampling", "decoding")


def _sample(g, seconds: float = 1.0):
    n = g["nodes"]
    feats, mix, *_ = n["InfiniteTalkAudioEncode"]().encode(g["wav2vec"], graph_run.speech(seconds), True)
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0,
                                                          image=torch.rand(1, 64, 64, 3))
    return n["InfiniteTalkStreamingSampler"]().sample(**graph_run.sampler_inputs(g, refs, feats))[0], mix


def test_progress_events_carry_stages_in_order_with_timings(graph, pack_module):
    events = graph_run.record_progress(pack_module("nodes.host"))
    handle, _ = _sample(graph)
    timed = [e for e in events if "timings" in e]
    chunks = len(handle.job.manifest.chunks)
    for k in range(chunks):  # chunk k: encoding references, sampling, decoding, in that order
        stages = [e["stage"] for e in timed if e["chunk"] == k and not e.get("chunk_done")]
        firsts = [stages.index(s) for s in CHUNK_STAGES]
        assert firsts == sorted(firsts), stages
    decoding = [e for e in timed if e["stage"] == "decoding"]
    assert len(decoding) == chunks and all(e["stage_seconds"] >= 0 for e in decoding)
    last = timed[-1]["timings"]
    assert set(CHUNK_STAGES) <= set(last) and all(v >= 0 for v in last.values())
    # running totals never go down
    for before, after in zip(timed, timed[1:]):
        assert all(after["timings"].get(k, 0) >= v - 1e-6 for k, v in before["timings"].items())


def test_video_combine_writes_metadata_thumbnail_and_report_next_to_the_mp4(graph):
    handle, mix = _sample(graph)
    combine = graph["nodes"]["InfiniteTalkVideoCombine"]().combine
    result = combine(25.0, "tests/rep", 19, frames=handle, audio=mix)
    mp4 = Path(result["result"][1])
    assert result["ui"]["images"][0]["filename"] == mp4.name and len(result["ui"]["images"]) == 1
    files = {e["kind"]: mp4.parent / e["filename"] for e in result["ui"]["infinitetalk_report"]}
    assert files == {"metadata": mp4.with_suffix(".json"), "thumbnail": mp4.with_suffix(".jpg"),
                     "report": mp4.with_name(mp4.stem + "_report.png")}
    metadata = json.loads(files["metadata"].read_text())
    assert metadata["frames"] == handle.frame_count and metadata["timings"]["muxing"] > 0
    assert len(metadata["chunks"]) == len(handle.job.manifest.chunks)
    assert all(c["timings"]["sampling"] > 0 and c["pass_calls"] > 0 for c in metadata["chunks"])
    assert metadata["chunks"][-1]["stop_frame"] == handle.frame_count
    assert Image.open(files["thumbnail"]).size == (64, 64)
    assert Image.open(files["report"]).size[0] == 1000


def test_video_combine_of_an_image_batch_writes_metadata_and_thumbnail_only(graph):
    result = graph["nodes"]["InfiniteTalkVideoCombine"]().combine(10.0, "tests/img", 23,
                                                                   images=torch.rand(6, 64, 64, 3))
    mp4 = Path(result["result"][1])
    kinds = sorted(e["kind"] for e in result["ui"]["infinitetalk_report"])
    assert kinds == ["metadata", "thumbnail"] and not mp4.with_name(mp4.stem + "_report.png").exists()
    metadata = json.loads(mp4.with_suffix(".json").read_text())
    assert metadata["frames"] == 6 and metadata["chunks"] == [] and "muxing" in metadata["timings"]


def test_a_report_failure_keeps_the_mp4(graph, pack_module, monkeypatch, caplog):
    report = pack_module("nodes.report_files")

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pack_module("infinitetalk_core.stream.run_report"), "write_metadata", broken)
    result = graph["nodes"]["InfiniteTalkVideoCombine"]().combine(10.0, "tests/img", 23,
                                                                   images=torch.rand(4, 64, 64, 3))
    assert Path(result["result"][1]).is_file() and "infinitetalk_report" not in result["ui"]
    assert "not written" in caplog.text and report is not None
