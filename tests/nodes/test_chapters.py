"""Chapters from the Streaming Sampler: cut at a silence, independent of each other (two processes give
the frames of one process rendering them in turn), exact length; a capped pass continued by the next."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pack_loader import sibling_module  # noqa: E402

graph_run = sibling_module(__file__, "test_graph_run")
graph = graph_run.graph  # the fixture
SILENCE = (1.2, 1.6)  # seconds of silence in the speech: the chapter boundary must land in there


def speech_with_a_pause(seconds: float = 2.8, rate: int = 16000) -> dict:
    audio = graph_run.speech(seconds, rate)
    audio["waveform"][..., int(SILENCE[0] * rate):int(SILENCE[1] * rate)] = 0
    return audio


def load_graph(pack) -> dict:
    """The ``graph`` fixture's nodes and models, loaded from the (already written) models folder."""
    n = pack.NODE_CLASS_MAPPINGS
    (model,) = n["InfiniteTalkModelLoader"]().load("tiny_wan_i2v.safetensors", "tiny_infinitetalk.safetensors",
                                                    "fp32", "keep", "sdpa")
    (wav2vec,) = n["InfiniteTalkWav2VecLoader"]().load("tiny_wav2vec2", "fp32", "cpu")
    core = pack.__name__ + ".infinitetalk_core"
    return {"nodes": n, "model": model, "wav2vec": wav2vec, "vae": graph_run.ComfyStyleVAE(core), "core": core}


def render(g: dict, **overrides):
    n = g["nodes"]
    feats, *_ = n["InfiniteTalkAudioEncode"]().encode(g["wav2vec"], speech_with_a_pause(), False)
    image = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3)
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=image)
    inputs = graph_run.sampler_inputs(g, refs, feats, **{"chapters": "2", **overrides})
    return n["InfiniteTalkStreamingSampler"]().sample(**inputs)


def frames_of(handle) -> np.ndarray:
    return np.concatenate(list(handle.iter_uint8(64)))


def test_two_chapters_cut_in_the_silence_render_alike_in_one_process_or_two(graph, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # models and output folders: the fixture's (env vars)
    children = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("chapter_child.py")), str(k),
                                  str(tmp_path / f"chapter{k}.npy")], env=env) for k in (1, 2)]
    handle, _, count, _ = render(graph, job_name="sequential")  # meanwhile: both chapters in this process
    assert all(child.wait(timeout=600) == 0 for child in children)
    assert count == 70  # 2.8 s: exactly the audio's frames over both chapters
    jobs = [Path(part.path) for part in handle.parts]
    chapter = [json.loads((job / "manifest.json").read_text())["layout"]["chapter"] for job in jobs]
    boundary = chapter[1]["start_frame"]
    assert SILENCE[0] * 25 <= boundary < SILENCE[1] * 25 and chapter[1]["kind"] == "silence"
    assert [c["stop_frame"] for c in chapter] == [boundary, 70]
    sequential = frames_of(handle)
    split = [np.load(tmp_path / f"chapter{k}.npy") for k in (1, 2)]
    assert len(split[0]) == boundary and len(split[1]) == 70 - boundary
    assert np.array_equal(np.concatenate(split), sequential)
    # chapter 2 does not depend on chapter 1: its first frames are anchored to its own reference
    assert not np.array_equal(split[1][:5], sequential[:5])


def test_chapter_boundaries_are_reported_and_a_bad_spec_is_refused(graph):
    with pytest.raises(ValueError, match="chapters='soon'"):
        render(graph, chapters="soon")
    with pytest.raises(ValueError, match="chapter=3, but this job has 2"):
        render(graph, chapter=3)


def test_a_capped_pass_is_continued_by_the_next(graph):
    first = render(graph, chapters="", job_name="capped", max_frames=30)
    assert first[2] == 30
    capped = frames_of(first[0])
    calls = graph["vae"].calls
    continued = render(graph, chapters="", job_name="capped")  # not refused: the cap is not the job's identity
    fresh = render(graph, chapters="", job_name="uncapped")
    assert continued[2] == fresh[2] == 70
    assert np.array_equal(frames_of(continued[0]), frames_of(fresh[0]))
    # the capped pass is a prefix: the same chunks, the cut one stored on its own (the chunk store is lossy)
    assert np.abs(capped.astype(int) - frames_of(fresh[0])[:30]).max() <= 3
    hashes = [[c["content"] for c in json.loads((Path(h[0].path) / "manifest.json").read_text())["chunks"]]
              for h in (continued, fresh)]
    assert hashes[0] == hashes[1]
    shorter = render(graph, chapters="", job_name="capped", max_frames=20)  # less than done: just fewer
    assert shorter[2] == 20 and np.array_equal(frames_of(shorter[0]), frames_of(fresh[0])[:20])
    assert graph["vae"].calls > calls


def test_scene_cuts_of_a_source_video_place_chapter_boundaries(pack_module):
    from fractions import Fraction
    from types import SimpleNamespace

    chapter_inputs, references = pack_module("nodes.chapter_inputs"), pack_module("nodes.references")
    images = torch.rand(250, 32, 32, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    images[160:] += 0.8  # a new shot from frame 160 (6.4 s)
    refs = references.ReferenceSource(250, 32, 32, Fraction(25), "chunk_start", "hold", images=images)
    assert chapter_inputs.source_scene_cuts(refs, 250) == [160]
    assert chapter_inputs.source_scene_cuts(refs, 150) == []  # past the audio's end: not this job's
    steady = {"waveform": torch.full((1, 1, 16000 * 10), 0.3), "sample_rate": 16000}  # no silence at all
    feats = SimpleNamespace(mix=steady, num_frames=250)
    chapters = chapter_inputs.job_chapters({"chapters": "2"}, feats, refs)
    assert [(c.start, c.kind) for c in chapters] == [(0, "start"), (160, "scene_cut")]


def test_chapter_one_is_the_start_of_the_whole_job(graph):
    """Without a job name, chapter 1 and the unchaptered job are one folder (the same frames); the manifest
    then reports the chapters of the latest pass only."""
    chapter_one = render(graph, chapter=1)[0]
    layout = json.loads((Path(chapter_one.path) / "manifest.json").read_text())["layout"]
    assert layout["chapter"]["index"] == 0 and len(layout["chapters"]) == 2
    whole = render(graph, chapters="")[0]
    assert whole.path == chapter_one.path and whole.frame_count == 70
    assert "chapter" not in json.loads((Path(whole.path) / "manifest.json").read_text())["layout"]


def _audio_of(path: Path) -> np.ndarray:
    from imageio_ffmpeg import get_ffmpeg_exe

    raw = subprocess.run([get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a", "-ac", "1", "-ar", "16000",
                          "-f", "f32le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32)


def test_a_chapter_mp4_has_its_own_audio_and_chapters_stitch_to_the_exact_length(graph, pack_module, tmp_path):
    n, concat = graph["nodes"], pack_module("infinitetalk_core.video.concat")
    audio = speech_with_a_pause()
    mp4s = []
    for k in (1, 2):
        handle = render(graph, chapter=k, job_name="mux")[0]
        result = n["InfiniteTalkVideoCombine"]().combine(25.0, f"tests/chapter{k}", 23, frames=handle, audio=audio)
        mp4s.append(Path(result["result"][1]))
    second = _audio_of(mp4s[1])
    start = handle.start_frame / 25  # chapter 2 starts inside the pause: its mp4 starts silent
    silent = int((SILENCE[1] - start - 0.05) * 16000)
    assert silent > 800 and np.abs(second[:silent]).max() < 0.01 and np.abs(second[silent + 1600:]).max() > 0.1
    stitched = concat.concat_streams(mp4s, tmp_path / "all.mp4", 70, audio=(audio["waveform"][0], 16000))
    duration, has_audio, frames = graph_run.ffmpeg_info(stitched)
    assert frames == 70 and has_audio and abs(duration - 2.8) < 0.05
