"""BS.1770 meter and −23 LUFS normalisation versus the reference (pyloudnorm 0.2.0) golden output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from infinitetalk_core.audio.loudness import integrated_loudness, normalize_loudness


def test_loudnorm_matches_reference(audio_golden, golden_dir):
    meta = json.loads((golden_dir / "audio" / "audio.json").read_text())
    wave = audio_golden["wave_16k"].numpy()
    assert integrated_loudness(wave, 16000) == pytest.approx(meta["mono_16k"]["loudness_lufs_before"], abs=1e-5)
    out = normalize_loudness(wave, 16000)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, audio_golden["wave_16k_loudnorm"].numpy(), atol=1e-6, rtol=0)


def test_stereo_file_loudnorm_matches_reference(audio_golden, golden_dir):
    meta = json.loads((golden_dir / "audio" / "audio.json").read_text())
    wave = audio_golden["stereo_loaded_16k_mono"].numpy()
    assert integrated_loudness(wave, 16000) == pytest.approx(meta["stereo_file"]["loudness_lufs_before"],
                                                            abs=1e-5)
    np.testing.assert_allclose(normalize_loudness(wave, 16000), audio_golden["stereo_loudnorm"].numpy(),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_normalised_track_measures_target(rate):
    t = np.arange(3 * rate) / rate
    wave = (0.05 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    out = normalize_loudness(wave, rate)
    assert integrated_loudness(out, rate) == pytest.approx(-23.0, abs=1e-4)


def test_relative_gate_ignores_quiet_passages():
    rate = 16000
    t = np.arange(4 * rate) / rate
    loud = (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    with_quiet_tail = np.concatenate([loud, 1e-3 * loud])  # 60 dB quieter: below the relative gate
    # only the few blocks straddling the boundary count: far from the 3 dB a plain average would lose
    assert integrated_loudness(with_quiet_tail, rate) == pytest.approx(integrated_loudness(loud, rate), abs=0.3)
    with_pause = np.concatenate([loud, np.zeros_like(loud)])  # silence: below the absolute gate
    assert integrated_loudness(with_pause, rate) == pytest.approx(integrated_loudness(loud, rate), abs=0.3)


def test_k_weighting_boosts_treble():
    rate = 16000
    t = np.arange(2 * rate) / rate
    low = integrated_loudness((0.1 * np.sin(2 * np.pi * 100 * t)).astype(np.float32), rate)
    high = integrated_loudness((0.1 * np.sin(2 * np.pi * 4000 * t)).astype(np.float32), rate)
    assert 4.0 < high - low < 6.0  # +4 dB high shelf, 38 Hz high pass


def test_silence_and_short_clips_are_left_unchanged():
    silence = np.zeros(16000, dtype=np.float32)
    assert integrated_loudness(silence, 16000) == float("-inf")
    assert normalize_loudness(silence, 16000) is silence
    short = (0.01 * np.ones(4000)).astype(np.float32)  # 0.25 s < one 400 ms block
    assert normalize_loudness(short, 16000) is short
    with pytest.raises(ValueError, match="0.4 s"):
        integrated_loudness(short, 16000)
