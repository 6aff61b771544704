"""Chapters on two real ComfyUI servers sharing one output folder: post_workflow.py --servers --chapters
puts one chapter on each, stitches them with the original audio, and a chapter whose server dies mid-way
is retried on the other one and resumed from the chunks left in the shared job folder."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared loaders
from pack_loader import sibling_module  # noqa: E402

_real = sibling_module(__file__, "test_real_server")
_conf = sibling_module(__file__, "conftest")
pytestmark = pytest.mark.comfyui
SECONDS, SILENCE = 4.0, (1.6, 2.4)  # 100 frames; the one pause, frames 40..60


def _start(base: Path, output: Path, name: str) -> dict:
    """Start one ComfyUI on a free port writing into the shared ``output`` folder."""
    port = _conf._free_port()
    log = open(base / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the server
    temp = base / f"temp_{name}"  # why: each server empties its temp folder when it starts
    proc = subprocess.Popen(
        [_conf.COMFY_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
         "--base-directory", str(base), "--output-directory", str(output), "--temp-directory", str(temp)],
        cwd=_conf.COMFY_DIR, stdout=log, stderr=subprocess.STDOUT)
    return {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": log, "log_path": base / f"{name}.log"}


def _wait_up(server: dict) -> None:
    """Until the server answers /system_stats (it must not exit first)."""
    for _ in range(720):
        try:
            urllib.request.urlopen(server["url"] + "/system_stats", timeout=2)
            return
        except OSError:
            assert server["proc"].poll() is None, server["log_path"].read_text()[-3000:]
            time.sleep(0.5)
    pytest.fail("ComfyUI did not start")


def _stop(server: dict) -> None:
    """Stop a server this test started."""
    server["proc"].terminate()  # the server this test started, by its handle
    try:
        server["proc"].wait(timeout=20)
    except subprocess.TimeoutExpired:
        server["proc"].kill()
        server["proc"].wait()
    server["log"].close()


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory, native_models, golden_dir):
    """Two servers: the same models and custom nodes, one shared output folder (the job folders)."""
    base = tmp_path_factory.mktemp("comfy2")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "infinitetalk_dubbing").symlink_to(_conf.REPO, target_is_directory=True)
    models = base / "models"
    for sub in ("vae", "text_encoders", "clip_vision"):
        (models / sub).mkdir(parents=True)
        for f in (native_models / sub).iterdir():
            (models / sub / f.name).symlink_to(f)
    _conf.write_tiny_dit(models)
    import shutil

    shutil.copytree(golden_dir / "audio" / "wav2vec2_tiny", models / "audio_encoders" / "tiny_wav2vec2")
    output = base / "shared_output"
    servers = [_start(base, output, "s1"), _start(base, output, "s2")]
    try:
        for s in servers:
            _wait_up(s)
        yield {"servers": servers, "output": output, "base": base}
    finally:
        for s in servers:
            _stop(s)


def _speech(path: Path) -> Path:
    """A 200 Hz tone with one silence in the middle (the only place for a chapter boundary)."""
    t = np.arange(int(SECONDS * 22050)) / 22050
    x = 0.3 * np.sin(2 * np.pi * 200 * t) * ((t < SILENCE[0]) | (t > SILENCE[1]))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return path


def _post(tmp_path: Path, servers: list[dict], job: str, steps: int, out: Path) -> tuple[int, str]:
    """post_workflow.py in chapter mode, as a user runs it; (exit status, its stderr)."""
    files = _real.write_inputs(tmp_path, SECONDS)
    graph = _real.tiny_graph("infinitetalk_image_to_video")
    graph["12"]["inputs"].update(job_name=job, steps=steps)
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(graph))
    cmd = [sys.executable, str(_conf.REPO / "scripts" / "post_workflow.py"), str(workflow),
           "--servers", ",".join(s["url"] for s in servers), "--chapters", "2",
           "--image", str(files["image"]), "--audio", str(_speech(tmp_path / "speech.wav")),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    return proc.returncode, proc.stderr


def _prompts(server: dict) -> list[int]:
    """The chapters a server ran (from its /history)."""
    history = _real.get_json(server["url"] + "/history")
    return sorted(h["prompt"][2]["12"]["inputs"]["chapter"] for h in history.values())


def test_two_chapters_on_two_servers_stitched_with_the_audio(two_servers, tmp_path):
    out = tmp_path / "final" / "dub.mp4"
    started = time.monotonic()
    code, err = _post(tmp_path, two_servers["servers"], "farm_test", 2, out)
    print(err, f"\nchapter run took {time.monotonic() - started:.1f} s")
    assert code == 0, err[-3000:]
    ran = [_prompts(s) for s in two_servers["servers"]]
    assert sorted(ran) == [[1], [2]]  # one chapter on each server
    boundary = float(re.search(r"boundaries: ([\d.]+) s \(silence\)", err).group(1))
    assert SILENCE[0] < boundary < SILENCE[1]
    frames, has_audio = _real.mp4_info(out)
    assert frames == int(SECONDS * 25) and has_audio  # exactly the audio's frame count
    jobs = two_servers["output"] / "InfiniteTalk_jobs"
    assert {p.name for p in jobs.iterdir()} >= {"farm_test-chapter01", "farm_test-chapter02"}


def _kill_when_chunks(server: dict, jobs: Path, job: str, found: dict, done: threading.Event) -> None:
    """Stop ``server`` once the chapter it renders has a finished chunk in the shared job folder."""
    while not done.is_set():
        try:
            running = _real.get_json(server["url"] + "/queue")["queue_running"]
        except OSError:
            running = []
        if running:
            chapter = running[0][2]["12"]["inputs"]["chapter"]
            manifest = jobs / f"{job}-chapter{chapter:02d}" / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["chunks"]:
                chunk = manifest.parent / json.loads(manifest.read_text())["chunks"][0]["file"]
                found.update(chapter=chapter, chunk=chunk, stamp=chunk.stat().st_mtime_ns, manifest=manifest)
                server["proc"].kill()  # the server dies mid-chapter (its lock goes with it)
                return
        time.sleep(0.1)


def test_a_chapter_whose_server_dies_is_resumed_on_the_other(two_servers, tmp_path):
    servers, jobs = two_servers["servers"], two_servers["output"] / "InfiniteTalk_jobs"
    found, done = {}, threading.Event()
    killer = threading.Thread(target=_kill_when_chunks, args=(servers[1], jobs, "farm_retry", found, done))
    killer.start()
    out = tmp_path / "retried.mp4"
    try:
        code, err = _post(tmp_path, servers, "farm_retry", 4, out)
    finally:
        done.set()  # why: a run that never reached the kill must not leave the watcher polling
        killer.join()
    print(err)
    assert code == 0, err[-3000:]
    assert found, "the second server never had a chunk to lose"
    assert re.search(rf"chapter {found['chapter']} failed on {re.escape(servers[1]['url'])} \(try 1/3\)", err)
    assert re.search(rf"chapter {found['chapter']}/2 .* done on {re.escape(servers[0]['url'])}", err)
    manifest = json.loads(found["manifest"].read_text())
    assert len(manifest["chunks"]) == 4  # the retry finished this very job folder (50 frames: 4 chunks)
    assert found["chunk"].stat().st_mtime_ns == found["stamp"]  # its finished chunk was reused, not redone
    frames, has_audio = _real.mp4_info(out)
    assert frames == int(SECONDS * 25) and has_audio
