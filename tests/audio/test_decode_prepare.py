"""Files through ffmpeg, ComfyUI AUDIO dicts, resampling/mono/loudness as librosa.load + pyloudnorm."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infinitetalk_core.audio import (
    audio_from_comfy,
    frames_for_samples,
    integrated_loudness,
    load_audio_file,
    prepare_waveform,
)
from infinitetalk_core.errors import AudioInputError

STEREO = "aevalsrc=0.3*sin(440*2*PI*t)|0.2*sin(660*2*PI*t):s={rate}"


def test_golden_stereo_wav_matches_librosa_load(golden_dir, audio_golden):
    samples, rate = load_audio_file(golden_dir / "audio" / "stereo_44100.wav")
    assert (samples.shape, rate) == ((2, 189630), 44100)
    mono16k = prepare_waveform(samples, rate, normalize=False)
    np.testing.assert_allclose(mono16k, audio_golden["stereo_loaded_16k_mono"].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(prepare_waveform(samples, rate), audio_golden["stereo_loudnorm"].numpy(),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, args, rate, channels", [
    ("a.wav", ("-c:a", "pcm_s16le"), 44100, 2),
    ("a.flac", ("-c:a", "flac"), 48000, 2),
    ("a.mp3", ("-c:a", "libmp3lame", "-b:a", "64k"), 22050, 2),
    ("a.m4a", ("-c:a", "aac", "-b:a", "48k"), 8000, 1),
])
def test_file_formats_and_rates(make_audio, name, args, rate, channels):
    source = STEREO.format(rate=rate) if channels == 2 else f"sine=frequency=300:sample_rate={rate}"
    path = make_audio(name, *args, source=source, seconds=1.5)
    samples, got_rate = load_audio_file(path)
    assert got_rate == rate and samples.shape[0] == channels and samples.dtype == np.float32
    assert abs(samples.shape[1] - 1.5 * rate) < 0.1 * rate  # codecs may add priming/padding samples
    wave = prepare_waveform(samples, got_rate)
    assert wave.shape == (math.ceil(samples.shape[1] * 16000 / rate),)
    assert integrated_loudness(wave, 16000) == pytest.approx(-23.0, abs=0.01)


def test_wav_decodes_exactly(make_audio):
    path = make_audio("exact.wav", "-c:a", "pcm_s16le", source=STEREO.format(rate=16000), seconds=1.0)
    samples, _ = load_audio_file(path)
    t = np.arange(16000) / 16000
    np.testing.assert_allclose(samples[0], 0.3 * np.sin(2 * np.pi * 440 * t), atol=1 / 32768 + 1e-6)
    np.testing.assert_allclose(samples[1], 0.2 * np.sin(2 * np.pi * 660 * t), atol=1 / 32768 + 1e-6)


def test_audio_track_of_a_video(make_audio):
    path = make_audio("clip.mp4", "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac", "-shortest",
                      source="testsrc=size=64x64:rate=25", seconds=1.0,
                      extra_inputs=("-f", "lavfi", "-t", "1", "-i", "sine=frequency=500:sample_rate=48000"))
    samples, rate = load_audio_file(path)
    assert rate == 48000 and samples.shape[0] == 1 and samples.shape[1] > 40000


def test_video_without_audio_is_rejected(make_audio):
    path = make_audio("silent.mp4", "-c:v", "libx264", source="testsrc=size=64x64:rate=25", seconds=0.4)
    with pytest.raises(AudioInputError, match="no audio track"):
        load_audio_file(path)


def test_corrupt_missing_and_unsupported_files(tmp_path):
    corrupt = tmp_path / "broken.mp3"
    corrupt.write_bytes(b"ID3\x03\x00garbage" + bytes(range(256)) * 4)
    with pytest.raises(AudioInputError, match="E_AUDIO: ffmpeg cannot decode broken.mp3"):
        load_audio_file(corrupt)
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all")
    with pytest.raises(AudioInputError, match="notes.txt") as info:
        load_audio_file(text)
    assert "Fix:" in str(info.value)
    with pytest.raises(AudioInputError, match="not found"):
        load_audio_file(tmp_path / "nope.wav")


def test_empty_audio_file(tmp_path):
    import wave

    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
    with pytest.raises(AudioInputError, match="empty|no decodable"):
        load_audio_file(path)


def test_comfy_audio_dict_equals_file_path(golden_dir):
    samples, rate = load_audio_file(golden_dir / "audio" / "stereo_44100.wav")
    comfy = {"waveform": torch.from_numpy(samples)[None], "sample_rate": rate}
    got, got_rate = audio_from_comfy(comfy)
    assert got_rate == rate
    np.testing.assert_array_equal(got, samples)
    np.testing.assert_array_equal(prepare_waveform(got, got_rate), prepare_waveform(samples, rate))


def test_comfy_audio_dict_errors():
    with pytest.raises(AudioInputError, match="batch of 2"):
        audio_from_comfy({"waveform": torch.zeros(2, 1, 100), "sample_rate": 16000})
    with pytest.raises(AudioInputError, match="ComfyUI AUDIO"):
        audio_from_comfy(torch.zeros(1, 1, 100))
    with pytest.raises(AudioInputError, match="shape"):
        audio_from_comfy({"waveform": torch.zeros(1, 1, 1, 100), "sample_rate": 16000})


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 0), np.float32), "empty"),
    (np.array([0.1, np.nan, 0.2], np.float32), "NaN or infinite"),
    (np.array([0.1, np.inf], np.float32), "NaN or infinite"),
    (np.array(["a", "b"]), "dtype"),
])
def test_bad_samples(bad, match):
    with pytest.raises(AudioInputError, match=match):
        prepare_waveform(bad, 16000)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, True])
def test_bad_sample_rate(rate):
    with pytest.raises(AudioInputError, match="sample rate"):
        prepare_waveform(np.zeros(1600, np.float32), rate)


def test_silence_is_valid_and_unchanged():
    wave = prepare_waveform(np.zeros((2, 48000), np.float32), 48000)
    assert wave.shape == (16000,) and not wave.any()


def test_integer_pcm_is_scaled():
    pcm = (np.sin(np.linspace(0, 100, 16000)) * 16384).astype(np.int16)
    wave = prepare_waveform(pcm, 16000, normalize=False)
    np.testing.assert_allclose(wave, pcm / 32768.0, atol=1e-7)


def test_frames_rule_is_float_arithmetic(golden_dir):
    import json

    cases = json.loads((golden_dir / "audio" / "audio.json").read_text())["seq_len_rule"]["cases"]
    assert [frames_for_samples(c["num_samples"]) for c in cases] == [c["emb_frames"] for c in cases]
    assert frames_for_samples(18560) == 28 != 18560 // 640
