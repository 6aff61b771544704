"""Two speakers: the muxed mix is built from the original waveforms at the source rate, on the features'
timeline; masks that cannot work are refused. post_workflow.py maps --audio/--audio-2/--image/--video to
the loaders that feed those roles and refuses to guess. No ComfyUI, no server."""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows" / "api"


# ---------------------------------------------------------------------------------------------- helpers

def tone(freq: float, seconds: float, rate: int, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (amp * np.cos(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def comfy(samples: np.ndarray, rate: int) -> dict:
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples))[None], "sample_rate": rate}


def correlation(signal: np.ndarray, freq: float, rate: int) -> float:
    """|<signal, e^{i 2 pi f t}>| / (|signal| |e|): ~0.7 for a pure tone at freq, ~0 otherwise."""
    if not np.any(signal):
        return 0.0
    t = np.arange(signal.shape[-1]) / rate
    return float(np.abs(np.dot(signal, np.exp(-2j * np.pi * freq * t)))
                 / (np.linalg.norm(signal) * np.sqrt(signal.shape[-1])))


@pytest.fixture()
def audio_node(pack_module):
    return pack_module("nodes.audio")


@pytest.fixture()
def core_audio(pack_module):
    return pack_module("infinitetalk_core.audio")


@pytest.fixture()
def errors(pack_module):
    return pack_module("infinitetalk_core.errors")


@pytest.fixture()
def wav2vec(pack, pack_module, models_dir, golden_dir):
    shutil.copytree(golden_dir / "audio" / "wav2vec2_tiny", models_dir / "audio_encoders" / "tiny_wav2vec2")
    (encoder,) = pack.NODE_CLASS_MAPPINGS["InfiniteTalkWav2VecLoader"]().load("tiny_wav2vec2", "fp32", "cpu")
    return encoder


# ------------------------------------------------------------------------------------------ the mux mix

def test_para_mix_is_at_the_source_rate_and_speaker_2_is_audible(audio_node, core_audio):
    first, second = tone(220, 1.2, 44100, 0.4), tone(660, 0.8, 22050, 0.4)
    tracks, mix = audio_node.speaker_tracks(comfy(first, 44100), comfy(second, 22050), "para", True)
    assert mix["sample_rate"] == 44100  # speaker 1's rate, not the 16 kHz feature rate
    wave = mix["waveform"].numpy()
    assert wave.shape[:2] == (1, 1) and wave.dtype == np.float32
    frames = core_audio.frames_for_samples(tracks[0].shape[0])
    assert abs(wave.shape[2] / 44100 - frames / 25) <= 1 / 16000
    both, only_1 = wave[0, 0, :int(0.8 * 44100)], wave[0, 0, int(0.8 * 44100):]
    assert correlation(both, 660, 44100) > 0.3 and correlation(both, 220, 44100) > 0.3
    assert correlation(only_1, 660, 44100) < 0.02 and correlation(only_1, 220, 44100) > 0.6
    # the untouched levels: speaker 1 + speaker 2 (no loudness normalisation, no 16 kHz round trip)
    np.testing.assert_allclose(only_1, first[0, int(0.8 * 44100):wave.shape[2]], atol=1e-6)


def test_add_mix_puts_speaker_2_where_its_features_start(audio_node, core_audio, pack_module):
    first, second = tone(220, 44101 / 44100, 44100), tone(660, 0.6, 22050)  # odd length: rounding shows
    tracks, mix = audio_node.speaker_tracks(comfy(first, 44100), comfy(second, 22050), "add", False)
    n1 = pack_module("infinitetalk_core.audio.mux_mix").prepared_length(44101, 44100)
    assert n1 == 16001 and np.flatnonzero(tracks[1])[0] == n1  # the features hear speaker 2 from n1 on
    track = core_audio.mux_mix(first, 44100, second, 22050, "add")
    assert abs(track.offsets[1] / 44100 - n1 / 16000) <= 0.5 / 44100  # the same start, in seconds
    assert abs(track.seconds - tracks[0].shape[0] / 16000) <= 0.5 / 44100
    wave = mix["waveform"].numpy()[0, 0]
    assert mix["sample_rate"] == 44100
    frames = core_audio.frames_for_samples(tracks[0].shape[0])
    assert abs(wave.shape[0] / 44100 - frames / 25) <= 1 / 16000
    head, tail = wave[:44101], wave[track.offsets[1]:]
    assert not wave[44101:track.offsets[1]].any()  # the sub-16 kHz-sample gap is silence
    assert correlation(head, 220, 44100) > 0.6 and correlation(head, 660, 44100) < 0.02
    assert correlation(tail, 660, 44100) > 0.6 and correlation(tail, 220, 44100) < 0.02


def test_channels_rates_and_clipping_guard(core_audio):
    mono_16k, stereo_48k = tone(220, 0.5, 16000), tone(660, 0.5, 48000, channels=2)
    track = core_audio.mux_mix(mono_16k, 16000, stereo_48k, 48000, "para")
    assert track.sample_rate == 16000 and track.waveform.shape == (2, 8000)  # mono broadcast to stereo
    np.testing.assert_allclose(track.waveform[0], track.waveform[1])
    quiet = core_audio.mux_mix(tone(220, 0.5, 22050, 0.3), 22050, tone(220, 0.5, 22050, 0.3), 22050, "para")
    assert quiet.gain == 1.0 and np.abs(quiet.waveform).max() == pytest.approx(0.6, abs=1e-6)
    loud = core_audio.mux_mix(tone(220, 0.5, 22050, 0.8), 22050, tone(220, 0.5, 22050, 0.8), 22050, "para")
    assert loud.gain == pytest.approx(1 / 1.6, rel=1e-5) and np.abs(loud.waveform).max() == pytest.approx(1.0)
    six, two = tone(220, 0.2, 16000, channels=6), tone(220, 0.2, 16000, channels=2)
    assert core_audio.mux_mix(six, 16000, two, 16000, "add").waveform.shape[0] == 1  # unrelated layouts: mono


def test_node_mix_is_as_long_as_the_features(wav2vec, pack):
    node = pack.NODE_CLASS_MAPPINGS["InfiniteTalkAudioEncode"]()
    first, second = comfy(tone(220, 0.9, 44100), 44100), comfy(tone(660, 0.53, 22050, channels=2), 22050)
    for mode in ("para", "add"):
        feats, mix, frames, seconds = node.encode(wav2vec, first, True, audio_2=second, multi_mode=mode)
        assert feats.mix is mix and feats.features[0].shape[0] == feats.features[1].shape[0] == frames
        assert mix["sample_rate"] == 44100 and mix["waveform"].shape[1] == 2  # stereo kept
        assert abs(mix["waveform"].shape[-1] / 44100 - seconds) <= 1 / 16000
        assert frames == (22 if mode == "para" else 35)
    _, single, _, _ = node.encode(wav2vec, first, True)
    assert single is first  # one speaker: the original AUDIO, untouched


# --------------------------------------------------------------------------------------- mask refusals

def box_mask(top: int, left: int, bottom: int, right: int, size=(64, 64)) -> torch.Tensor:
    mask = torch.zeros(1, *size)
    mask[:, top:bottom, left:right] = 1.0
    return mask


def refused(errors, call) -> str:
    with pytest.raises(errors.InputValidationError) as exc:
        call()
    text = str(exc.value)
    assert text.startswith("E_INPUT_VALIDATION: ") and " Fix: " in text
    assert exc.value.what.endswith(".") and exc.value.fix.endswith(".")
    return text


def test_masks_without_audio_2_and_overlapping_boxes_are_refused(pack, errors):
    node = pack.NODE_CLASS_MAPPINGS["InfiniteTalkAudioEncode"]()
    speech = comfy(tone(220, 0.5, 16000), 16000)
    loaders = importlib.import_module(node.__module__.rsplit(".", 1)[0] + ".loaders")
    unused = loaders.Wav2VecEncoder(object(), "unused", torch.float32)  # checks run before it is touched
    text = refused(errors, lambda: node.encode(unused, speech, True, mask_1=box_mask(0, 0, 64, 32)))
    assert "audio_2" in text
    refused(errors, lambda: node.encode(unused, speech, True, mask_2=box_mask(0, 0, 64, 32),
                                        mask_1=box_mask(0, 32, 64, 64)))
    same = box_mask(4, 4, 40, 30)
    text = refused(errors, lambda: node.encode(unused, speech, True, audio_2=speech,
                                               mask_1=same, mask_2=same))
    assert "same bounding box" in text
    text = refused(errors, lambda: node.encode(unused, speech, True, audio_2=speech,
                                               mask_1=box_mask(0, 0, 64, 40), mask_2=box_mask(2, 2, 62, 38)))
    assert "overlap by 100%" in text
    text = refused(errors, lambda: node.encode(unused, speech, True, audio_2=speech,
                                               mask_1=box_mask(0, 0, 64, 50), mask_2=box_mask(0, 3, 64, 53)))
    assert "overlap by 94%" in text


def test_separate_or_slightly_overlapping_boxes_are_accepted(audio_node):
    left, right = box_mask(0, 0, 64, 34), box_mask(0, 30, 64, 64)  # 4 of 34 columns shared
    assert audio_node.speaker_boxes(True, left, right) == [(0, 0, 64, 34), (0, 30, 64, 64)]
    assert audio_node.speaker_boxes(True, None, None) is None
    assert audio_node.speaker_boxes(False, None, None) is None
    assert audio_node.box_overlap((0, 0, 10, 10), (0, 1, 10, 11)) == pytest.approx(0.9)
    assert audio_node.speaker_boxes(True, box_mask(0, 0, 10, 10), box_mask(0, 1, 10, 11))  # exactly 90%: ok


# -------------------------------------------------------------------------------------- post_workflow

@pytest.fixture(scope="module")
def post():
    script = REPO / "scripts" / "post_workflow.py"
    spec = importlib.util.spec_from_file_location("post_workflow_under_test", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def find(graph: dict, class_type: str) -> str:
    (node_id,) = [i for i, n in graph.items() if n["class_type"] == class_type]
    return node_id


def two_speaker_graph() -> dict:
    """The image example with a second LoadAudio wired into Audio Encode's audio_2."""
    graph = example("infinitetalk_image_to_video")
    encode = find(graph, "InfiniteTalkAudioEncode")
    graph["40"] = {"class_type": "LoadAudio", "inputs": {"audio": "speaker_2.wav"}}
    graph[encode]["inputs"].update(audio_2=["40", 0], multi_mode="add")
    return graph


def refused_plan(post, graph, keys, pinned=frozenset()) -> str:
    with pytest.raises(post.WorkflowError) as exc:
        post.plan_files(graph, keys, pinned)
    text = str(exc.value)
    assert " Fix: " in text and text.endswith(".")
    return text


@pytest.mark.parametrize("name, kind", [("infinitetalk_image_to_video", "image"),
                                        ("infinitetalk_video_dubbing", "video")])
def test_examples_map_each_file_to_its_one_loader(post, name, kind):
    graph = example(name)
    loader = {"image": "LoadImage", "video": "LoadVideo"}[kind]
    plan, warnings = post.plan_files(graph, {kind, "audio"})
    assert plan == {kind: find(graph, loader), "audio": find(graph, "LoadAudio")} and warnings == []
    text = refused_plan(post, graph, {"audio", "audio_2"})
    assert "--audio-2" in text and "audio_2" in text  # no second speaker in a one-speaker graph
    other = "video" if kind == "image" else "image"
    assert "no Load" in refused_plan(post, graph, {other})


def test_two_speaker_graph_maps_audio_and_audio_2(post):
    graph = two_speaker_graph()
    first = find({k: v for k, v in graph.items() if k != "40"}, "LoadAudio")
    plan, warnings = post.plan_files(graph, {"image", "audio", "audio_2"})
    assert plan["audio"] == first and plan["audio_2"] == "40" and warnings == []
    plan, warnings = post.plan_files(graph, {"audio"})  # no --audio-2: graph's own file kept, with a warning
    assert plan == {"audio": first}
    (warning,) = warnings
    assert "node 40" in warning and "--audio-2" in warning and "speaker_2.wav" in warning


def test_links_are_followed_through_other_nodes(post):
    graph = two_speaker_graph()
    encode = find(graph, "InfiniteTalkAudioEncode")
    graph["41"] = {"class_type": "AudioTrim", "inputs": {"audio": ["40", 0], "start": 0.0}}
    graph[encode]["inputs"]["audio_2"] = ["41", 0]
    plan, _ = post.plan_files(graph, {"audio", "audio_2"})
    assert plan["audio_2"] == "40"


def test_ambiguous_or_unwired_loaders_are_errors_naming_the_nodes(post):
    graph = example("infinitetalk_image_to_video")
    graph["40"] = {"class_type": "LoadAudio", "inputs": {"audio": "music.wav"}}  # feeds nothing
    text = refused_plan(post, graph, {"audio"})
    assert "LoadAudio node 40 feeds neither" in text and "--set 40.audio=FILE" in text
    assert post.plan_files(graph, {"audio"}, pinned={"40"})[0] == {"audio": "8"}
    assert post.plan_files(graph, {"image"}) == ({"image": "9"}, [])  # no audio flag: nothing to decide
    # the same LoadAudio into audio and audio_2
    same = example("infinitetalk_image_to_video")
    same["10"]["inputs"]["audio_2"] = ["8", 0]
    assert "--set 8.audio=FILE" in refused_plan(post, same, {"audio"})
    # two Audio Encode nodes, each with its own LoadAudio on `audio`
    double = example("infinitetalk_image_to_video")
    double["40"] = {"class_type": "LoadAudio", "inputs": {"audio": "b.wav"}}
    double["41"] = dict(copy.deepcopy(double["10"]), inputs=dict(double["10"]["inputs"], audio=["40", 0]))
    text = refused_plan(post, double, {"audio"})
    assert "nodes 8 and 40" in text and "--set 8.audio=FILE --set 40.audio=FILE" in text
    # a second LoadImage (e.g. for a mask) is not overwritten by --image
    images = example("infinitetalk_image_to_video")
    images["42"] = {"class_type": "LoadImage", "inputs": {"image": "mask.png"}}
    images["10"]["inputs"]["mask_1"] = ["42", 1]
    assert "--set 42.image=FILE" in refused_plan(post, images, {"image"})
    assert post.plan_files(images, {"image"}, pinned={"42"})[0] == {"image": "9"}
    # a graph without our nodes: one loader is fine, two are ambiguous
    foreign = {"1": {"class_type": "LoadAudio", "inputs": {"audio": "a.wav"}},
               "2": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}}}
    assert post.plan_files(foreign, {"audio"})[0] == {"audio": "1"}
    foreign["3"] = {"class_type": "LoadAudio", "inputs": {"audio": "b.wav"}}
    assert "nodes 1 and 3" in refused_plan(post, foreign, {"audio"})


def test_prepare_uploads_per_node_and_never_overwrites_silently(post, tmp_path, monkeypatch):
    uploads = []
    def fake_upload(server, path):
        uploads.append(Path(path).name)
        return f"up/{Path(path).name}"

    monkeypatch.setattr(post, "upload", fake_upload)
    for name in ("one.wav", "two.wav", "face.png"):
        (tmp_path / name).write_bytes(b"x")
    log = []
    graph = post.prepare(two_speaker_graph(), "http://unused", {"image": tmp_path / "face.png",
                                                                 "audio": tmp_path / "one.wav",
                                                                 "audio_2": tmp_path / "two.wav"},
                         ["12.steps=3"], log=log.append)
    assert graph["8"]["inputs"]["audio"] == "up/one.wav" and graph["40"]["inputs"]["audio"] == "up/two.wav"
    assert graph["9"]["inputs"]["image"] == "up/face.png" and graph["12"]["inputs"]["steps"] == 3
    uploads.clear()
    graph = post.prepare(two_speaker_graph(), "http://unused", {"audio": tmp_path / "one.wav"},
                         [f"40.audio={tmp_path / 'two.wav'}"], log=log.append)
    assert graph["40"]["inputs"]["audio"] == "up/two.wav" and uploads == ["one.wav", "two.wav"]
    graph = post.prepare(two_speaker_graph(), "http://unused", {"audio": tmp_path / "one.wav"}, [],
                         log=log.append)
    assert graph["40"]["inputs"]["audio"] == "speaker_2.wav" and any("warning" in line for line in log)
    with pytest.raises(post.WorkflowError, match="node '99'"):
        post.prepare(two_speaker_graph(), "http://unused", {}, ["99.steps=3"])


def test_cli_refuses_before_contacting_the_server(post, tmp_path, capsys):
    workflow = EXAMPLES / "infinitetalk_image_to_video.json"
    (tmp_path / "b.wav").write_bytes(b"x")
    code = post.main([str(workflow), "--server", "http://127.0.0.1:9", "--audio-2", str(tmp_path / "b.wav")])
    assert code == 2 and "--audio-2 was given" in capsys.readouterr().err
