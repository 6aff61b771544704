"""True dubbing in a real ComfyUI: the "keep motion" example (native Solid Mask + Combine Masks, denoise)
keeps the source outside the mask, and a re-roll posted through the API regenerates only the chunks from
the one asked for."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared loaders
from pack_loader import sibling_module  # noqa: E402

_real = sibling_module(__file__, "test_real_server")
_script, mp4_info, run, tiny_graph, write_inputs = (_real._script, _real.mp4_info, _real.run, _real.tiny_graph,
                                                    _real.write_inputs)

pytestmark = pytest.mark.comfyui
SIZE = 64  # tiny_graph renders 64 x 64; the 96 x 64 source is centre-cropped to columns 16..80


def _decode(path, width: int, height: int, vf: str = "") -> np.ndarray:
    from imageio_ffmpeg import get_ffmpeg_exe

    cmd = [get_ffmpeg_exe(), "-v", "error", "-i", str(path), *(["-vf", vf] if vf else []),
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def _keep_motion_graph() -> dict:
    graph = tiny_graph("infinitetalk_video_dubbing_keep_motion")
    graph["14"]["inputs"].update(width=96, height=64)  # the canvas at the source video's size
    graph["15"]["inputs"].update(width=32, height=32)
    graph["16"]["inputs"].update(x=32, y=16)  # output columns 16..48, rows 16..48
    graph["12"]["inputs"].update(steps=4, mask_feather=2)
    return graph


def test_keep_motion_example_keeps_the_source_outside_the_mask(server, tmp_path):
    files = write_inputs(tmp_path, 2.0)
    history = run(server, _keep_motion_graph(), {"video": files["video"], "audio": files["audio"]})
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[-3000:]
    (video,) = _script().videos(history)
    path = server["base"] / "output" / video["subfolder"] / video["filename"]
    frames, has_audio = mp4_info(path)
    assert frames == 50 and has_audio
    out = _decode(path, SIZE, SIZE).astype(int)
    # the source at the output size and at each output frame's time (25 fps; held after its 1.5 s)
    source = _decode(files["video"], SIZE, SIZE, "crop=64:64:16:0").astype(int)
    shown = [min(int(np.floor(g / 25 * 30 + 1e-6)), len(source) - 1) for g in range(50)]
    diff = np.abs(out - source[shown]).mean(-1)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[16:48, 16:48] = True
    # two lossy encodes (job chunks crf 12, the mp4 crf 19 4:2:0) stand between the frames and this check
    assert diff[:, ~inside].mean() < 4 and diff[:, inside].mean() > 3 * diff[:, ~inside].mean()


def test_reroll_through_the_api_regenerates_from_that_chunk(server, tmp_path):
    files = write_inputs(tmp_path, 2.0)  # 50 frames -> 4 chunks of 17 (5 context)
    graph = tiny_graph("infinitetalk_image_to_video")
    graph["12"]["inputs"]["job_name"] = "reroll_test"
    inputs = {"image": files["image"], "audio": files["audio"]}
    assert run(server, graph, inputs)["status"]["status_str"] == "success"
    manifest = server["base"] / "output" / "InfiniteTalk_jobs" / "reroll_test" / "manifest.json"
    before = {c["index"]: c["sha256"] for c in json.loads(manifest.read_text())["chunks"]}
    graph["12"]["inputs"].update(regenerate_from_chunk=3, reroll_seed=1234)
    assert run(server, graph, inputs)["status"]["status_str"] == "success"
    body = json.loads(manifest.read_text())
    after = {c["index"]: c["sha256"] for c in body["chunks"]}
    assert body["rerolls"] == {"2": 1234} and len(after) == 4
    assert [after[i] == before[i] for i in range(4)] == [True, True, False, False]


def test_svi_talk_mode_runs_through_the_api(server, tmp_path):
    files = write_inputs(tmp_path, 2.0)
    graph = tiny_graph("infinitetalk_image_to_video")
    graph["12"]["inputs"].update(mode="svi_talk", text_guidance=2.0, audio_guidance=5.0)
    history = run(server, graph, {"image": files["image"], "audio": files["audio"]})
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[-3000:]
    (video,) = _script().videos(history)
    frames, has_audio = mp4_info(server["base"] / "output" / video["subfolder"] / video["filename"])
    assert frames == 50 and has_audio
