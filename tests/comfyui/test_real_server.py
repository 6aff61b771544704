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
LORA_FILE = "tiny_lightx2v_rank4.safetensors"  # written by conftest.py
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
    if graph["1"]["inputs"]["lora_1"] != "none":  # the *_lightx2v presets: a tiny LoRA in the same layout
        graph["1"]["inputs"]["lora_1"] = LORA_FILE
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
                                        ("infinitetalk_video_dubbing", ("video", "audio")),
                                        ("infinitetalk_image_to_video_lightx2v", ("image", "audio")),
                                        ("infinitetalk_video_dubbing_lightx2v", ("video", "audio"))])
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


def write_tone_wav(path: Path, rate: int, seconds: float, freq: float, tone_first: bool) -> Path:
    """A mono 16-bit wav: ``freq`` for one half of ``seconds`` and silence in the other."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    samples = 0.4 * np.sin(2 * np.pi * freq * t)
    half = (t < seconds / 2) if tone_first else (t >= seconds / 2)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((samples * half * 32767).astype("<i2").tobytes())
    return path


def mp4_audio(path: Path) -> tuple[np.ndarray, int]:
    """The mp4's audio stream decoded by ffmpeg at its own rate: (mono float32 samples, sample rate)."""
    from imageio_ffmpeg import get_ffmpeg_exe

    probe = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True,
                           text=True, check=False).stderr
    rate = int(re.search(r"Audio: aac[^\n]*?, (\d+) Hz", probe).group(1))
    raw = subprocess.run([get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a", "-ac", "1",
                          "-f", "f32le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype="<f4"), rate


def tone_energy(samples: np.ndarray, rate: int, freq: float) -> float:
    """Share of the spectrum's energy within 20 Hz of ``freq`` (Hann window)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    bins = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.abs(bins - freq) <= 20].sum() / max(spectrum.sum(), 1e-20))


def test_two_speakers_both_heard_at_the_source_rate(server, tmp_path):
    """A second LoadAudio on Audio Encode's audio_2 (para), Video Combine muxing Audio Encode's `audio`
    output: speaker 1's 220 Hz in the first second, speaker 2's 660 Hz in the second, at 44.1 kHz."""
    files = write_inputs(tmp_path, 2.0)
    files["audio"] = write_tone_wav(tmp_path / "speaker_1.wav", 44100, 2.0, 220, tone_first=True)
    files["audio_2"] = write_tone_wav(tmp_path / "speaker_2.wav", 22050, 2.0, 660, tone_first=False)
    graph = tiny_graph("infinitetalk_image_to_video")
    graph["40"] = {"class_type": "LoadAudio", "inputs": {"audio": "speaker_2.wav"}}
    graph["10"]["inputs"].update(audio=["8", 0], audio_2=["40", 0], multi_mode="para")
    graph["13"]["inputs"]["audio"] = ["10", 1]  # Audio Encode's `audio` output: the two-speaker mix
    history = run(server, graph, {k: files[k] for k in ("image", "audio", "audio_2")})
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[-3000:]
    videos = _script().videos(history)
    path = server["base"] / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    frames, has_audio = mp4_info(path)
    assert frames == 50 and has_audio
    samples, rate = mp4_audio(path)
    assert rate == 44100  # speaker 1's rate, not the 16 kHz the features use
    first, second = samples[int(0.15 * rate):int(0.85 * rate)], samples[int(1.15 * rate):int(1.85 * rate)]
    energies = {(half, f): tone_energy(part, rate, f) for half, part in (("first", first), ("second", second))
                for f in (220, 660)}
    print("mp4 audio", rate, "Hz; tone energy shares", energies)
    assert energies["first", 220] > 0.5 and energies["first", 660] < 0.01, energies
    assert energies["second", 660] > 0.5 and energies["second", 220] < 0.01, energies  # speaker 2 is heard
