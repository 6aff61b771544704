"""Reference frame per chunk: golden parity at 25 fps, time resampling, strategies, overflow modes."""
from __future__ import annotations

import json
from fractions import Fraction

import pytest

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.plan import plan_chunks
from infinitetalk_core.stream.references import (
    reference_frame_for_chunk,
    reference_frame_indices,
    source_frames_needed,
    source_index_at_time,
    wrap_frame_index,
)


def test_golden_video_cases_at_25_fps(golden_dir):
    cases = json.loads((golden_dir / "chunk_plan" / "chunk_plan.json").read_text())["cases"]
    video = [c for c in cases if c["input"] == "video" and "error" not in c]
    assert video
    for case in video:
        plan = plan_chunks(
            case["n_audio_frames"], case["frame_num"], case["motion_frame"], case["max_frames_num"]
        )
        got = reference_frame_indices(plan, case["n_video_frames"], 25, "chunk_start", "hold")
        assert got == [ch["reference_video_access"]["resolved"] for ch in case["chunks"]], case["label"]
        assert got == [ch["reference_frame"] for ch in case["chunks"]], case["label"]


def test_image_input_uses_frame_zero_everywhere():
    plan = plan_chunks(1000)
    for strategy in ("chunk_start", "chunk_center", "first_frame"):
        for overflow in ("hold", "loop", "pingpong"):
            assert set(reference_frame_indices(plan, 1, 25, strategy, overflow)) == {0}


@pytest.mark.parametrize(
    "fps, expected",
    [
        # chunk starts 0, 72, 144, 216, 288 frames at 25 fps = 0, 2.88, 5.76, 8.64, 11.52 s
        (25, [0, 72, 144, 216, 288]),
        (24, [0, 69, 138, 207, 276]),  # 2.88 * 24 = 69.12
        (Fraction(24000, 1001), [0, 69, 138, 207, 276]),  # 23.976: 69.05, 138.1, 207.2, 276.2
        (Fraction(30000, 1001), [0, 86, 172, 258, 345]),  # 29.97: 86.31, 172.6, 258.9, 345.3
        (30, [0, 86, 172, 259, 345]),  # 86.4, 172.8, 259.2, 345.6
        (50, [0, 144, 288, 432, 576]),  # exact multiples: no float drift
        (60, [0, 172, 345, 518, 691]),  # 172.8, 345.6, 518.4, 691.2
    ],
)
def test_chunk_start_resamples_by_time(fps, expected):
    plan = plan_chunks(300)
    assert reference_frame_indices(plan, 10_000, fps) == expected
    assert reference_frame_indices(plan, 10_000, float(fps)) == expected


def test_index_is_the_frame_on_screen():
    # frame i is shown during [i/fps, (i+1)/fps)
    assert source_index_at_time(0.0, 30) == 0
    assert source_index_at_time(1 / 30 - 1e-4, 30) == 0
    assert source_index_at_time(1 / 30, 30) == 1
    assert source_index_at_time(Fraction(72, 25), 50) == 144


def test_strategies():
    plan = plan_chunks(300)
    assert reference_frame_indices(plan, 1000, 25, "chunk_center") == [40, 112, 184, 256, 328]
    assert reference_frame_indices(plan, 1000, 50, "chunk_center") == [80, 224, 368, 512, 656]
    assert reference_frame_indices(plan, 1000, 25, "first_frame") == [0] * 5
    # the first chunk's reference (its context latent source) is the frame at time 0 by default
    assert reference_frame_for_chunk(plan.chunks[0], 81, 1000, 29.97) == 0


def test_overflow_modes():
    assert [wrap_frame_index(i, 4, "hold") for i in range(9)] == [0, 1, 2, 3, 3, 3, 3, 3, 3]
    assert [wrap_frame_index(i, 4, "loop") for i in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [wrap_frame_index(i, 4, "pingpong") for i in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert [wrap_frame_index(i, 2, "pingpong") for i in range(5)] == [0, 1, 0, 1, 0]
    assert [wrap_frame_index(i, 1, mode) for i in range(3) for mode in ("loop", "pingpong")] == [0] * 6
    plan = plan_chunks(600)  # chunk starts 0, 72, ..., 576
    assert reference_frame_indices(plan, 100, 25, overflow="hold") == [0, 72] + [99] * 7
    assert reference_frame_indices(plan, 100, 25, overflow="loop") == [0, 72, 44, 16, 88, 60, 32, 4, 76]
    assert reference_frame_indices(plan, 100, 25, overflow="pingpong") == [0, 72, 54, 18, 90, 36, 36, 90, 18]


def test_every_index_is_valid_for_all_rates_and_modes():
    plan = plan_chunks(3000)
    for fps in (23.976, 24, 25, 29.97, 30, 50, 60):
        for strategy in ("chunk_start", "chunk_center", "first_frame"):
            for overflow in ("hold", "loop", "pingpong"):
                for n in (1, 2, 7, 500, 5000):
                    got = reference_frame_indices(plan, n, fps, strategy, overflow)
                    assert len(got) == plan.num_chunks and all(0 <= i < n for i in got)
                    if strategy == "chunk_start" and overflow == "hold":  # long video: increasing in time
                        assert got == sorted(got)


def test_source_frames_needed():
    assert source_frames_needed([5, 0, 5, 3]) == [0, 3, 5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(source_frames=0), "source_frames"),
        (dict(source_frames=2.5), "source_frames"),
        (dict(source_fps=0), "source_fps"),
        (dict(source_fps=-25), "source_fps"),
        (dict(source_fps="abc"), "source_fps"),
        (dict(source_fps=float("nan")), "source_fps"),
        (dict(strategy="middle"), "strategy"),
        (dict(overflow="mirror"), "overflow"),
    ],
)
def test_invalid_inputs(kwargs, match):
    args = dict(source_frames=100, source_fps=25, strategy="chunk_start", overflow="hold") | kwargs
    with pytest.raises(InputValidationError, match=match):
        reference_frame_indices(plan_chunks(200), **args)
