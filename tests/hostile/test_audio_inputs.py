"""F. Audio that cannot be used -> E_AUDIO with a fix, never a silently shortened track. Files go through the
core's load_audio_file; AUDIO values through the Audio Encode node."""
from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
import torch

import hostile_harness as hh


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="session")
def mp3_3s(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile_audio") / "speech.mp3"
    subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=330:duration=3",
                    "-c:a", "libmp3lame", "-b:a", "64k", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def video_without_audio(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile_video") / "silent.mp4"
    subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def _load(path):
    return hh.sub("infinitetalk_core.audio").load_audio_file(path)


def _wav(path, samples: np.ndarray, rate: int = 16000):
    """A 32-bit float WAV (any values, NaN included) written by hand."""
    data = samples.astype("<f4").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, rate, rate * 4, 4, 32)
    path.write_bytes(header + b"data" + struct.pack("<I", len(data)) + data)
    return path


def test_the_intact_mp3_is_three_seconds(mp3_3s):
    samples, rate = _load(mp3_3s)
    assert abs(samples.shape[1] / rate - 3.0) < 0.1


MP3_DAMAGE = {
    "middle_zeros": lambda d: d[: len(d) // 3] + bytes(len(d) // 3) + d[2 * len(d) // 3:],
    "middle_random": lambda d: d[: len(d) // 3] + np.random.default_rng(1).bytes(len(d) // 3) + d[2 * len(d) // 3:],
    "middle_ff": lambda d: d[: len(d) // 4] + b"\xff" * (len(d) // 2) + d[3 * len(d) // 4:],
}


@pytest.mark.parametrize("how", list(MP3_DAMAGE))
def test_damaged_mp3_errors_or_keeps_its_length(how, mp3_3s, tmp_path):
    path = tmp_path / "damaged.mp3"
    path.write_bytes(MP3_DAMAGE[how](mp3_3s.read_bytes()))
    try:
        samples, rate = _load(path)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_AUDIO", "damaged", "decode", "corrupt", "mp3")
        return
    seconds = samples.shape[1] / rate
    assert abs(seconds - 3.0) < 0.15, f"a 3 s mp3 with damaged middle bytes silently decoded to {seconds:.2f} s"
    assert np.isfinite(samples).all()


@pytest.mark.parametrize("keep", [0.5, 0.13, 0.02], ids=["half", "0.4s", "header_only"])
def test_truncated_mp3_is_not_silently_shortened(keep, mp3_3s, tmp_path):
    path = tmp_path / "cut.mp3"
    data = mp3_3s.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    try:
        samples, rate = _load(path)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_AUDIO", "truncat", "damaged", "shorter", "decode", "corrupt", "incomplete")
        return
    pytest.fail(f"a truncated 3 s mp3 decoded to {samples.shape[1] / rate:.2f} s without an error")


NOT_AUDIO = {
    "text_as_mp3": ("notes.mp3", b"these are meeting notes, not a song\n" * 20),
    "png_as_wav": ("face.wav", b"\x89PNG\r\n\x1a\n" + bytes(400)),
    "empty_mp3": ("empty.mp3", b""),
    "empty_wav": ("empty.wav", b""),
    "riff_garbage": ("bad.wav", b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk"),
    "zip_as_flac": ("archive.flac", b"PK\x03\x04" + bytes(200)),
}


@pytest.mark.parametrize("name,data", list(NOT_AUDIO.values()), ids=list(NOT_AUDIO))
def test_file_that_is_not_audio(name, data, tmp_path):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(Exception) as info:
        _load(path)
    text = hh.assert_coded(info.value, "E_AUDIO", "decode", "not audio", "no audio", "corrupt", "cannot", "empty",
                           "not a")
    assert name in text, "the message should name the file"


def test_directory_instead_of_a_file(tmp_path):
    folder = tmp_path / "speech.wav"
    folder.mkdir()
    with pytest.raises(Exception) as info:
        _load(folder)
    hh.assert_coded(info.value, "E_AUDIO", "folder", "directory", "not found", "not a file")


def test_missing_file(tmp_path):
    with pytest.raises(Exception) as info:
        _load(tmp_path / "nowhere.wav")
    hh.assert_coded(info.value, "E_AUDIO", "nowhere.wav", "not found")


def test_video_without_audio_track(video_without_audio):
    with pytest.raises(Exception) as info:
        _load(video_without_audio)
    hh.assert_coded(info.value, "E_AUDIO", "no audio", "audio track")


def test_zero_length_wav(tmp_path):
    with pytest.raises(Exception) as info:
        _load(_wav(tmp_path / "zero.wav", np.zeros(0)))
    hh.assert_coded(info.value, "E_AUDIO", "empty", "0 samples", "no ")


def _encode(world, audio, **kw):
    return world.nodes["InfiniteTalkAudioEncode"]().encode(world.wav2vec, audio, True, **kw)


@pytest.mark.parametrize("content", ["nan", "inf", "one_sample"])
def test_bad_wav_file_through_audio_encode(content, tmp_path, world):
    wave = 0.1 * np.sin(np.arange(16000) / 10.0)
    if content == "nan":
        wave[4000:4100] = np.nan
    elif content == "inf":
        wave[10] = np.inf
    else:
        wave = wave[:1]
    try:
        samples, rate = _load(_wav(tmp_path / f"{content}.wav", wave))
        audio = {"waveform": torch.from_numpy(samples)[None], "sample_rate": rate}
        _encode(world, audio)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_AUDIO", "NaN", "infinite", "short", "sample", "empty")
    else:
        pytest.fail(f"{content} audio was encoded without an error")


def _audio(kind: str):
    rate = 16000
    good = hh.speech(1.0, rate)
    if kind == "empty":
        return {"waveform": torch.zeros(1, 1, 0), "sample_rate": rate}
    if kind == "nan":
        good["waveform"][0, 0, 5000] = float("nan")
        return good
    if kind == "all_nan":
        return {"waveform": torch.full((1, 1, rate), float("nan")), "sample_rate": rate}
    if kind == "inf":
        good["waveform"][0, 0, 10] = float("-inf")
        return good
    if kind == "one_sample":
        return {"waveform": torch.full((1, 1, 1), 0.2), "sample_rate": rate}
    if kind == "shorter_than_a_frame":
        return {"waveform": torch.full((1, 1, 300), 0.2), "sample_rate": rate}
    if kind == "rate_zero":
        return dict(good, sample_rate=0)
    if kind == "rate_negative":
        return dict(good, sample_rate=-16000)
    if kind == "rate_nan":
        return dict(good, sample_rate=float("nan"))
    if kind == "rate_string":
        return dict(good, sample_rate="fast")
    if kind == "four_dims":
        return {"waveform": torch.zeros(1, 1, 1, rate), "sample_rate": rate}
    if kind == "batch_of_two":
        return {"waveform": torch.zeros(2, 1, rate), "sample_rate": rate}
    if kind == "not_a_dict":
        return "speech.wav"
    if kind == "none":
        return None
    if kind == "no_waveform":
        return {"sample_rate": rate}
    if kind == "waveform_string":
        return {"waveform": "loud", "sample_rate": rate}
    if kind == "zero_channels":
        return {"waveform": torch.zeros(1, 0, rate), "sample_rate": rate}
    raise AssertionError(kind)


BAD_AUDIO = ["empty", "nan", "all_nan", "inf", "one_sample", "shorter_than_a_frame", "rate_zero", "rate_negative",
             "rate_nan", "rate_string", "four_dims", "batch_of_two", "not_a_dict", "none", "no_waveform",
             "waveform_string", "zero_channels"]


@pytest.mark.parametrize("kind", BAD_AUDIO)
def test_audio_encode_refuses_bad_audio(kind, world):
    with pytest.raises(Exception) as info:
        _encode(world, _audio(kind))
    hh.assert_coded(info.value, "E_AUDIO", "audio", "sample", "waveform")


@pytest.mark.parametrize("kind", ["nan", "empty", "rate_zero"])
def test_audio_encode_refuses_bad_second_speaker(kind, world):
    with pytest.raises(Exception) as info:
        _encode(world, hh.speech(1.0), audio_2=_audio(kind))
    hh.assert_coded(info.value, "E_AUDIO", "audio", "sample", "speaker")


def test_silence_is_valid_and_keeps_its_length(world):
    feats, _, frames, seconds = _encode(world, {"waveform": torch.zeros(1, 2, 16000), "sample_rate": 16000})
    assert frames == 25 and seconds == 1.0 and torch.isfinite(feats.features[0]).all()


def test_nul_byte_in_an_audio_path(tmp_path):
    with pytest.raises(Exception) as info:
        _load(str(tmp_path / "speech\x00.wav"))
    hh.assert_coded(info.value, ("E_AUDIO", "E_INPUT_VALIDATION", "E_DISK"), "NUL", "not found", "name")
