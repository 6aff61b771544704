"""post_workflow.py's chapter mode (scripts/chapter_farm.py) without a server: the scheduler with fake
render callables, the whole command with a fake ComfyUI API, and the refusal of bad --chapters values."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
A, B = "http://a:1", "http://b:2"


def _load(name: str, file: str):
    if name not in sys.modules:  # dataclasses need their module registered
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / file)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def farm():
    return _load("chapter_farm_under_test", "chapter_farm.py")


@pytest.fixture(scope="module")
def post():
    return _load("post_workflow_for_farm_test", "post_workflow.py")


def _parts(farm, count: int, frames: int = 50):
    return [farm.Part(i + 1, i * frames, (i + 1) * frames) for i in range(count)]


def test_chapters_are_split_over_two_servers_one_at_a_time(farm):
    busy, most, lock = {A: 0, B: 0}, {A: 0, B: 0}, threading.Lock()

    def render(server, part):
        with lock:
            busy[server] += 1
            most[server] = max(most[server], busy[server])
        time.sleep(0.05)
        with lock:
            busy[server] -= 1
        return f"{server}#{part.number}"

    out = farm.run_chapters(_parts(farm, 4), [A, B], render, log=lambda _: None)
    assert all(o.result == f"{o.server}#{n}" and not o.error for n, o in out.items())
    assert {o.server for o in out.values()} == {A, B}  # both servers worked
    assert most == {A: 1, B: 1}  # never two chapters in flight on one server


def test_a_failed_chapter_is_retried_on_the_other_server(farm):
    calls, lines = [], []

    def render(server, part):
        calls.append((server, part.number))
        if (server, part.number) == (A, 1):
            raise ConnectionError("websocket closed")
        time.sleep(0.02)
        return part.number

    out = farm.run_chapters(_parts(farm, 2), [A, B], render, log=lines.append)
    assert out[1].server == B and out[1].attempts == 2 and not out[1].error
    assert calls.count((A, 1)) == 1  # not retried on the server that failed it while another one is there
    assert lines == [f"chapter 1 failed on {A} (try 1/3): websocket closed; retrying"]


def test_a_refusing_server_leaves_every_chapter_to_the_other(farm):
    def render(server, part):
        if server == A:
            raise RuntimeError("the server refused the workflow")
        return part.number

    out = farm.run_chapters(_parts(farm, 3), [A, B], render, log=lambda _: None)
    assert [out[n].server for n in (1, 2, 3)] == [B, B, B] and not any(o.error for o in out.values())


def test_a_chapter_failing_everywhere_stops_after_the_attempts(farm):
    calls = []

    def render(server, part):
        calls.append(server)
        raise RuntimeError(f"boom on {server}")

    out = farm.run_chapters(_parts(farm, 1), [A, B], render, attempts=3, log=lambda _: None)
    assert len(calls) == 3 and set(calls[:2]) == {A, B}  # the other server first, then the same again
    assert out[1].attempts == 3 and out[1].error.startswith("boom on")


def _speech(path: Path, seconds: float = 4.0, rate: int = 16000) -> Path:
    """A tone with a silence from 1.6 s to 2.4 s: the one place for a cut."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 200 * t) * ((t < 1.6) | (t > 2.4))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return path


def _fake_api(post, fail_first: set):
    """post_workflow's API over a fake ComfyUI: each prompt 'renders' the chapter it was given."""
    posted, served = [], {}

    def submit(server, graph, client):
        sampler = next(n["inputs"] for n in graph.values()
                       if n["class_type"] == "InfiniteTalkStreamingSampler")
        prefix = next(n["inputs"]["filename_prefix"] for n in graph.values()
                      if n["class_type"] == "InfiniteTalkVideoCombine")
        posted.append((server, sampler["chapter"], sampler["chapters"], sampler["job_name"], prefix))
        if (server, sampler["chapter"]) in fail_first:
            fail_first.discard((server, sampler["chapter"]))
            raise SystemExit("the server refused the workflow: out of memory")
        served[client] = sampler["chapter"]
        return client

    def follow(server, client, prompt_id, log=print, timeout=0):
        return {"status": {"status_str": "success"},
                "outputs": {"13": {"images": [{"filename": f"c{served[client]}.mp4", "subfolder": "",
                                               "type": "output"}]}}}

    def request(server, path):
        return path.encode()  # the 'mp4' says which file was asked for

    kept = ("parse_sets", "plan_files", "_file_widget", "videos")
    api = SimpleNamespace(**{k: getattr(post, k) for k in kept})
    api.prepare = lambda graph, server, files, sets, log=print: graph
    api.submit, api.follow, api._request = submit, follow, request
    return api, posted


def _args(tmp_path, **kw):
    base = dict(workflow=REPO / "example_workflows" / "api" / "infinitetalk_image_to_video.json", set=[],
                server="http://127.0.0.1:8188", servers=f"{A},{B}", chapters="2", silence_db=-40.0,
                min_silence_ms=300, attempts=3, out=tmp_path / "final" / "dub.mp4")
    return argparse.Namespace(**{**base, **kw})


def test_chapter_mode_posts_each_chapter_and_stitches_them_in_order(farm, post, tmp_path, monkeypatch):
    api, posted = _fake_api(post, fail_first={(A, 1), (B, 1)})
    stitched = {}
    monkeypatch.setattr(farm, "count_frames", lambda path: 100 if path.name == "dub.mp4" else 50)
    monkeypatch.setattr(farm, "stitch", lambda paths, out, frame_count, audio: stitched.update(
        paths=[p.read_bytes() for p in paths], out=out, frames=frame_count, audio=audio))
    files = {"audio": _speech(tmp_path / "speech.wav"), "image": tmp_path / "face.png"}
    assert farm.main(api, _args(tmp_path), files) == 0
    assert stitched["frames"] == 100 and stitched["out"] == tmp_path / "final" / "dub.mp4"
    assert [b.decode().split("filename=")[1].split("&")[0] for b in stitched["paths"]] == ["c1.mp4", "c2.mp4"]
    assert {spec for _, _, spec, _, _ in posted} == {"2.00"}  # the boundary: mid-silence, the same everywhere
    assert len({job for _, _, _, job, _ in posted}) == 1  # one job name, so the job folders are shared
    prefixes = {(k, prefix.endswith(f"-chapter{k:02d}")) for _, k, _, _, prefix in posted}
    assert prefixes == {(1, True), (2, True)}  # a file prefix per chapter
    assert sum(1 for _, k, *_ in posted if k == 1) == 3  # refused on A, then on B, then done on A
    assert (tmp_path / "final" / "dub.chapters" / "chapter02.mp4").is_file()  # only under what --out names


@pytest.mark.parametrize("value", ["abc", "0", "2.5, 1.0", "9", "-3"])
def test_bad_chapters_values_are_refused_in_one_line(post, tmp_path, capsys, value):
    audio = _speech(tmp_path / "speech.wav")
    workflow = str(REPO / "example_workflows" / "api" / "infinitetalk_image_to_video.json")
    code = post.main([workflow, "--audio", str(audio), "--servers", "http://127.0.0.1:9",
                      "--chapters", value, "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Fix:" in err, err
    assert not (tmp_path / "o.chapters").exists()  # refused before anything was written or posted


def test_bad_servers_and_a_missing_audio_are_refused(post, tmp_path, capsys):
    workflow = str(REPO / "example_workflows" / "api" / "infinitetalk_image_to_video.json")
    assert post.main([workflow, "--servers", "a,b", "--chapters", "2"]) == 2
    assert "--servers 'a,b' is not a comma-separated list" in capsys.readouterr().err
    assert post.main([workflow, "--servers", "http://x:1", "--chapters", "2"]) == 2
    assert "needs --audio FILE" in capsys.readouterr().err
