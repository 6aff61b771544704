"""LoRA (lightx2v layout) on an fp8-scaled base kept in fp8, inside a real ComfyUI: the patches are
ModelPatcher weight patches that really change the weights (full and low-VRAM loads) and the video."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_FP8, LORA = "tiny_wan_fp8_scaled.safetensors", "tiny_lightx2v_rank4.safetensors"  # see conftest.py

pytestmark = pytest.mark.comfyui


def _server_tests():
    spec = importlib.util.spec_from_file_location("real_server", Path(__file__).with_name("test_real_server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_patches_change_the_fp8_weights_in_comfyui(server):
    out = subprocess.run([os.environ["COMFYUI_PYTHON"], str(Path(__file__).with_name("check_lora_patches.py")),
                          os.environ["COMFYUI_DIR"], str(REPO), str(server["base"] / "models"), BASE_FP8, LORA,
                          "0.75"], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(errors["full_load"]) == {"blocks.0.self_attn.q.weight", "blocks.0.cross_attn.o.weight",
                                        "blocks.0.ffn.0.weight", "blocks.0.ffn.2.weight",
                                        "blocks.0.self_attn.q.bias", "blocks.0.ffn.0.bias"}


def _frames(path: Path) -> np.ndarray:
    from imageio_ffmpeg import read_frames

    reader = read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]).astype(np.float32)


def test_fp8_keep_workflow_with_lora_runs_and_the_lora_changes_the_video(server, tmp_path):
    rs = _server_tests()
    files = rs.write_inputs(tmp_path, 1.0)
    videos = {}
    for strength in (1.0, 0.0):
        graph = rs.tiny_graph("infinitetalk_image_to_video")
        graph["1"]["inputs"].update(base_model=BASE_FP8, fp8_weights="keep", lora_1=LORA, strength_1=strength)
        graph["12"]["inputs"]["job_name"] = f"lora_fp8_{strength}"
        history = rs.run(server, graph, {"image": files["image"], "audio": files["audio"]})
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[-3000:]
        (video,) = rs._script().videos(history)
        path = server["base"] / "output" / video["subfolder"] / video["filename"]
        frames, has_audio = rs.mp4_info(path)
        assert frames == 25 and has_audio  # 1.0 s of speech at 25 fps, muxed
        videos[strength] = _frames(path)
    assert videos[1.0].shape == videos[0.0].shape
    assert np.abs(videos[1.0] - videos[0.0]).mean() > 0.2  # measured 0.8 (of 255); the LoRA is applied, not silently dropped
