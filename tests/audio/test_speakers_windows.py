"""Two-speaker tracks and per-chunk windows (reference mirror padding, silence option)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infinitetalk_core.audio import (
    chunk_audio_windows,
    combine_speakers,
    encode_audio_features,
    load_audio_file,
    prepare_waveform,
    window_rows,
)
from infinitetalk_core.errors import InputValidationError


def test_para_pads_the_shorter_track_with_silence():
    a, b = np.ones(5, np.float32), 2 * np.ones(3, np.float32)
    tracks = combine_speakers(a, b, "para")
    np.testing.assert_array_equal(tracks.tracks[0], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(tracks.tracks[1], [2, 2, 2, 0, 0])
    np.testing.assert_array_equal(tracks.mix, [3, 3, 3, 1, 1])
    np.testing.assert_array_equal(combine_speakers(b, a, "para").tracks[0], [2, 2, 2, 0, 0])


def test_add_puts_speakers_one_after_the_other():
    a, b = np.ones(2, np.float32), 2 * np.ones(3, np.float32)
    tracks = combine_speakers(a, b, "add")
    np.testing.assert_array_equal(tracks.tracks[0], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(tracks.tracks[1], [0, 0, 2, 2, 2])
    np.testing.assert_array_equal(tracks.mix, [1, 1, 2, 2, 2])


def test_missing_second_speaker_is_silent_and_bad_mode_rejected():
    tracks = combine_speakers(np.ones(4, np.float32), None, "para")
    assert not tracks.tracks[1].any() and tracks.tracks[1].shape == (4,)
    with pytest.raises(InputValidationError, match="para"):
        combine_speakers(np.ones(4), np.ones(4), "mix")
    with pytest.raises(InputValidationError, match="mono"):
        combine_speakers(np.ones((2, 4)), np.ones(4), "add")


def test_windows_reproduce_every_chunk_of_the_reference_trace(golden_dir):
    """All 14 chunk_plan cases (audio of 82..1001 frames, clip mode, cap): centres, first/last windows
    and whether mirror padding shows, for every chunk."""
    plan = json.loads((golden_dir / "chunk_plan" / "chunk_plan.json").read_text())
    checked = 0
    for case in plan["cases"]:
        n = case["n_audio_frames"]
        for chunk in case.get("chunks", []):
            rows = window_rows(chunk["audio_start"], 81, n)
            centres = np.concatenate([np.arange(*run) for run in chunk["center_rows_source"]])
            np.testing.assert_array_equal(rows[:, 2], centres)
            assert rows[0].tolist() == chunk["window_rows_first_frame"]
            assert rows[-1].tolist() == chunk["window_rows_last_frame"]
            clamped = np.clip(np.arange(chunk["audio_start"], chunk["audio_start"] + 81)[:, None]
                              + np.arange(-2, 3), 0, n - 1)
            assert (rows != clamped).any() == chunk["mirror_padding_visible"]
            checked += 1
    assert checked == 72


def test_golden_chunk_windows(audio_golden, golden_dir):
    meta = json.loads((golden_dir / "audio" / "audio.json").read_text())
    for k, start in ((0, 0), (1, 72)):
        windows = chunk_audio_windows(audio_golden["emb"], start, 81)
        torch.testing.assert_close(windows, audio_golden[f"windows_chunk{k}"], atol=0, rtol=0)
        assert window_rows(start, 81, 107).tolist() == meta["windows"][k]["rows_all_frames"]


def test_silence_padding_uses_encoded_silence_then_zeros():
    features = torch.arange(12, dtype=torch.float32).reshape(12, 1, 1) + 1  # rows 10, 11 = "silence"
    windows = chunk_audio_windows(features, 6, 4, total_frames=10, padding="silence")[0, :, :, 0, 0]
    assert windows.tolist() == [[5, 6, 7, 8, 9], [6, 7, 8, 9, 10], [7, 8, 9, 10, 11], [8, 9, 10, 11, 12]]
    windows = chunk_audio_windows(features[:10], 6, 4, padding="silence")[0, :, :, 0, 0]
    assert windows[-1].tolist() == [8, 9, 10, 0, 0]
    mirror = chunk_audio_windows(features, 6, 4, total_frames=10)[0, :, :, 0, 0]
    assert mirror[-1].tolist() == [8, 9, 10, 10, 9]


def test_mirror_past_a_very_short_track_clamps_to_the_first_row():
    assert window_rows(0, 8, 3)[:, 2].tolist() == [0, 1, 2, 2, 1, 0, 0, 0]


def test_persons_are_stacked_in_order():
    f1, f2 = torch.zeros(30, 2, 4), torch.ones(30, 2, 4)
    for given in ([f1, f2], torch.stack([f1, f2])):
        windows = chunk_audio_windows(given, 0, 17)
        assert windows.shape == (2, 17, 5, 2, 4)
        assert not windows[0].any() and windows[1].all()


def test_window_errors():
    with pytest.raises(InputValidationError, match="mirror"):
        window_rows(0, 81, 100, padding="reflect")
    with pytest.raises(InputValidationError, match="frames"):
        window_rows(0, 0, 100)


def test_windows_before_the_audio_start_clamp_to_row_zero():
    """A continued clip's context frames come before the audio: they hear its first row."""
    rows = window_rows(-3, 5, 100)
    assert rows[0].tolist() == [0, 0, 0, 0, 0] and rows[-1].tolist() == [0, 0, 1, 2, 3]
    with pytest.raises(InputValidationError, match="total_frames"):
        chunk_audio_windows(torch.zeros(10, 2, 4), 0, 5, total_frames=11)
    with pytest.raises(InputValidationError, match=r"\[T, L, C\]"):
        chunk_audio_windows(torch.zeros(10, 4), 0, 5)


def test_two_speaker_pipeline_from_files(make_audio, tiny_encoder):
    """Files of different lengths and rates → para tracks → per-speaker features → [2, F, 5, L, C]."""
    first = make_audio("spk1.wav", "-c:a", "pcm_s16le", source="sine=frequency=220:sample_rate=44100",
                       seconds=2.0)
    second = make_audio("spk2.flac", "-c:a", "flac", source="anoisesrc=c=pink:r=22050:a=0.2", seconds=1.2)
    waves = [prepare_waveform(*load_audio_file(p)) for p in (first, second)]
    tracks = combine_speakers(*waves, "para")
    features = [encode_audio_features(tiny_encoder, t) for t in tracks.tracks]
    assert features[0].shape == features[1].shape == (50, 2, 32)
    windows = chunk_audio_windows(features, 0, 81)  # a chunk longer than the audio: mirror padded
    assert windows.shape == (2, 81, 5, 2, 32)
    torch.testing.assert_close(windows[1, 49, 3], features[1][49])  # row 50 mirrors to 49
    add = combine_speakers(*waves, "add")
    assert add.mix.shape[0] == waves[0].shape[0] + waves[1].shape[0]
