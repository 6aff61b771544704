"""The Streaming Sampler's live preview (HLS in the job folder, a /view URL in its progress) and Video
Combine's stream copy of the live segments."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import torch

from pack_loader import sibling_module  # noqa: E402  (tests/ is on sys.path: see conftest.py)

graph_run = sibling_module(__file__, "test_graph_run")
graph = graph_run.graph  # the fixture


def _run(graph, pack_module, **overrides):
    n, host_mod = graph["nodes"], pack_module("nodes.host")
    feats, mix, *_ = n["InfiniteTalkAudioEncode"]().encode(graph["wav2vec"], graph_run.speech(1.6), False)
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=torch.rand(1, 64, 64, 3))
    events = graph_run.record_progress(host_mod)
    handle, *_ = n["InfiniteTalkStreamingSampler"]().sample(**graph_run.sampler_inputs(graph, refs, feats, **overrides))
    return handle, mix, events


def test_live_preview_url_stays_in_the_output_folder_and_combine_copies_the_segments(graph, pack_module):
    handle, mix, events = _run(graph, pack_module)
    urls = [e for e in events if "live_url" in e]
    assert len(urls) == 1
    query = parse_qs(urlparse(urls[0]["live_url"]).query)
    output = graph["models"].parent / "output"
    live = (output / query["subfolder"][0]).resolve()
    assert query["type"] == ["output"] and query["filename"] == ["index.m3u8"]
    assert live == (Path(handle.path) / "live").resolve() and output.resolve() in live.parents
    assert "#EXT-X-ENDLIST" in (live / "index.m3u8").read_text() and (live / "latest.m4v").is_file()

    combine = graph["nodes"]["InfiniteTalkVideoCombine"]()
    results = {}
    for crf in (19, 23):  # 19 = the live segments' crf: stream copy; anything else: encode
        events.clear()
        path = Path(combine.combine(25.0, f"tests/live{crf}", crf, frames=handle, audio=mix)["result"][1])
        done = next(e for e in events if e.get("stage") == "done")
        results[crf] = (done["stream_copy"], graph_run.ffmpeg_info(path))
    assert results[19][0] is True and results[23][0] is False
    (copy_seconds, copy_audio, copy_frames), (enc_seconds, enc_audio, enc_frames) = results[19][1], results[23][1]
    assert copy_frames == enc_frames == 40 and copy_audio and enc_audio and abs(copy_seconds - enc_seconds) < 0.03


def test_live_preview_off_writes_no_live_folder(graph, pack_module):
    handle, _, events = _run(graph, pack_module, live_preview=False, job_name="nolive")
    assert not (Path(handle.path) / "live").exists() and not any("live_url" in e for e in events)
