"""End to end in a real ComfyUI: the pack loads, the example API workflows run with tiny models, an
interrupted run resumes. Native loaders get the smallest files they accept (make_native_models.py)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
import urllib.request
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
NODE_IDS = {"InfiniteTalkModelLoader", "InfiniteTalkWav2VecLoader", "InfiniteTalkAudioEncode",
            "InfiniteTalkReferenceSampler", "InfiniteTalkStreamingSampler", "InfiniteTalkColorMatch",
            "InfiniteTalkVideoCombine"}

pytestmark = pytest.mark.comfyui


def _script():
    spec = importlib.util.spec_from_file_location("post_workflow", REPO / "scripts" / "post_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def write_inputs(folder: Path, seconds: float) -> dict[str, Path]:
    from imageio_ffmpeg import get_ffmpeg_exe

    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "face.png"
    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)).save(image)
    audio = folder / f"speech_{seconds}.wav"
    t = np.arange(int(seconds * 22050)) / 22050
    samples = (0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 2 * t) * 32767).astype("<i2")
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050), w.writeframes(samples.tobytes())
    video = folder / "source.mp4"
    subprocess.run([get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=96x64:rate=30", "-t", "1.5", "-pix_fmt", "yuv420p", str(video)], check=True)
    return {"image": image, "audio": audio, "video": video}


def tiny_graph(name: str) -> dict:
    graph = json.loads((REPO / "example_workflows" / "api" / f"{name}.json").read_text())
    graph["1"]["inputs"].update(base_model="tiny_wan.safetensors", infinitetalk_model="tiny_it.safetensors",
                                weight_dtype="fp32", attention="sdpa")
    graph["2"]["inputs"].update(wav2vec_model="tiny_wav2vec2", device="cpu")
    graph["3"]["inputs"]["vae_name"] = "tiny_wan_vae.safetensors"
    graph["4"]["inputs"].update(clip_name="clip_l_random.safetensors", type="stable_diffusion")
    graph["7"]["inputs"]["clip_name"] = "vit_l_random.safetensors"
    graph["12"]["inputs"].update(size="custom", width=64, height=64, chunk_frames=17, context_frames=5, steps=2)
    return graph


def run(server, graph: dict, files: dict, timeout: float = 600) -> dict:
    post = _script()
    graph = post.prepare(graph, server["url"], files, [])
    client = uuid.uuid4().hex
    prompt_id = post.submit(server["url"], graph, client)
    return post.follow(server["url"], client, prompt_id, log=lambda *_: None, timeout=timeout)


def mp4_info(path: Path) -> tuple[int, bool]:
    from imageio_ffmpeg import get_ffmpeg_exe

    err = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v", "-f", "null", "-"],
                         capture_output=True, text=True, check=False).stderr
    return int(re.findall(r"frame=\s*(\d+)", err)[-1]), "Audio: aac" in err


def test_server_loads_the_pack(server):
    log = server["log"].read_text()
    assert "IMPORT FAILED" not in log
    info = get_json(server["url"] + "/object_info")
    assert NODE_IDS <= set(info)
    sampler = info["InfiniteTalkStreamingSampler"]["input"]["required"]
    assert sampler["chunk_frames"][1]["default"] == 81 and sampler["vae"][0] == "VAE"
    extensions = get_json(server["url"] + "/extensions")
    assert any(e.endswith("/infinitetalk.js") for e in extensions)


@pytest.mark.parametrize("name, keys", [("infinitetalk_image_to_video", ("image", "audio")),
                                        ("infinitetalk_video_dubbing", ("video", "audio"))])
def test_example_workflow_runs_and_writes_the_mp4(server, tmp_path, name, keys):
    files = write_inputs(tmp_path, 2.0)
    history = run(server, tiny_graph(name), {k: files[k] for k in keys})
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[-3000:]
    videos = _script().videos(history)
    assert len(videos) == 1
    path = server["base"] / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    frames, has_audio = mp4_info(path)
    assert frames == 50 and has_audio  # 2.0 s of speech at 25 fps, muxed


def test_interrupt_then_repost_resumes(server, tmp_path):
    files = write_inputs(tmp_path, 4.0)  # 100 frames -> 8 chunks of 17 (5 context)
    graph = tiny_graph("infinitetalk_image_to_video")
    graph["12"]["inputs"]["job_name"] = "resume_test"
    graph["12"]["inputs"]["steps"] = 4
    post = _script()
    graph = post.prepare(graph, server["url"], {"image": files["image"], "audio": files["audio"]}, [])
    manifest = server["base"] / "output" / "InfiniteTalk_jobs" / "resume_test" / "manifest.json"
    client = uuid.uuid4().hex
    prompt_id = post.submit(server["url"], graph, client)
    deadline = time.time() + 600
    while time.time() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["chunks"]:
            break
        time.sleep(0.2)
    urllib.request.urlopen(urllib.request.Request(server["url"] + "/interrupt", data=b"{}"), timeout=30)
    history = post.follow(server["url"], client, prompt_id, log=lambda *_: None, timeout=300)
    assert history["status"]["status_str"] == "error"
    done = json.loads(manifest.read_text())["chunks"]
    assert 1 <= len(done) < 8
    first_chunk = manifest.parent / done[0]["file"]
    stamp = first_chunk.stat().st_mtime_ns
    prompt_id = post.submit(server["url"], graph, client)
    history = post.follow(server["url"], client, prompt_id, log=lambda *_: None, timeout=600)
    assert history["status"]["status_str"] == "success"
    assert len(json.loads(manifest.read_text())["chunks"]) == 8
    assert first_chunk.stat().st_mtime_ns == stamp  # finished chunks were reused, not regenerated
