"""Chunk plan: golden parity with the reference loop, exact tiling for every length, validation."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.plan import StreamPlan, latent_frames_for, plan_chunks

CHUNK_SETTINGS = [(81, 9), (81, 1), (81, 25), (33, 5), (49, 13), (17, 5)]  # exhaustive over 1..3000


def golden_cases(golden_dir):
    cases = json.loads((golden_dir / "chunk_plan" / "chunk_plan.json").read_text())["cases"]
    return [c for c in cases if "error" not in c]


def assert_tiles_output(plan: StreamPlan) -> None:
    """Kept frames tile [0, output_frames) in order, with no gap and no overlap."""
    f, m = plan.chunk_frames, plan.context_frames
    cursor = 0
    for k, c in enumerate(plan.chunks):
        assert c.index == k and c.start == k * (f - m) and c.stop == c.start + f
        assert c.output_start == cursor and c.output_stop > c.output_start
        assert c.output_start == c.start + c.keep_start and c.output_stop == c.start + c.keep_stop
        assert c.keep_start == (0 if k == 0 else m) and c.keep_stop <= f
        assert c.context_frames == (1 if k == 0 else m)
        assert c.context_latents == latent_frames_for(c.context_frames)
        assert c.padded_frames == max(0, c.stop - plan.num_audio_frames)
        cursor = c.output_stop
    assert cursor == plan.output_frames
    # every chunk but the last is kept up to its end (the next one picks up right after)
    assert all(c.keep_stop == f for c in plan.chunks[:-1])


def test_golden_cases_match_reference(golden_dir):
    for case in golden_cases(golden_dir):
        plan = plan_chunks(
            case["n_audio_frames"], case["frame_num"], case["motion_frame"], case["max_frames_num"]
        )
        label = case["label"]
        assert plan.num_chunks == case["num_chunks"], label
        assert plan.output_frames == case["output_frames"], label
        got_map = [
            {"chunk": c.index, "frames": [c.keep_start, c.keep_stop], "output": [c.output_start, c.output_stop]}
            for c in plan.chunks
        ]
        assert got_map == case["output_map"], label
        for c, ref in zip(plan.chunks, case["chunks"]):
            assert [c.start, c.stop] == [ref["audio_start"], ref["audio_end_exclusive"]], label
            assert c.context_frames == ref["context_pixel_frames"], label
            assert c.context_latents == ref["context_latent_frames"], label
            assert ref["context_latents_found_in_model_input"] == [c.context_latents], label
            assert [[c.keep_start, c.keep_stop, 1]] == ref["appended_decoded_frame_range"], label
            assert c.kept_frames == ref["appended_frames"], label
            if c.index > 0:  # context = the last M decoded frames of the previous chunk
                assert ref["context_frames"] == {"from_chunk": [c.index - 1], "frames": [[81 - 9, 81, 1]]}
            if ref["mirror_padding_visible"]:
                assert c.hears_audio_end, label


def test_audio_of_one_chunk_or_less_is_one_trimmed_chunk():
    # the reference rejects N <= 81 (golden case image_81); we plan one chunk cut to N frames
    for n in (1, 2, 50, 80, 81):
        plan = plan_chunks(n)
        assert plan.num_chunks == 1 and plan.output_frames == n
        only = plan.chunks[0]
        assert (only.start, only.stop, only.keep_start, only.keep_stop) == (0, 81, 0, n)
        assert only.padded_frames == 81 - n and only.hears_audio_end


def test_every_length_tiles_exactly():
    for f, m in CHUNK_SETTINGS:
        for n in range(1, 3001):
            plan = plan_chunks(n, f, m)
            assert plan.output_frames == n
            assert plan.num_chunks == (1 if n <= f else 1 + -(-(n - f) // (f - m)))
            assert_tiles_output(plan)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 20000),
    f_n=st.integers(1, 60),
    m_k=st.integers(0, 20),
    cap=st.one_of(st.none(), st.integers(1, 20000)),
)
def test_any_settings_tile_exactly(n, f_n, m_k, cap):
    f, m = 4 * f_n + 1, 4 * m_k + 1
    if m >= f:
        with pytest.raises(InputValidationError):
            plan_chunks(n, f, m, cap)
        return
    plan = plan_chunks(n, f, m, cap)
    assert plan.output_frames == (n if cap is None else min(n, cap))
    assert_tiles_output(plan)
    for frame in {0, plan.output_frames // 2, plan.output_frames - 1}:
        c = plan.chunk_for_output_frame(frame)
        assert c.output_start <= frame < c.output_stop


def test_cap_limits_output_and_audio_beyond_is_not_padding():
    plan = plan_chunks(700, max_frames=400)
    assert plan.output_frames == 400 and plan.num_chunks == 6
    assert plan.chunks[-1].padded_frames == 0 and not plan.chunks[-1].hears_audio_end


def test_plan_properties():
    plan = plan_chunks(500)
    assert plan.stride == 72 and plan.latent_frames == 21
    assert plan.chunks[0].is_first and not plan.chunks[1].is_first
    assert plan.chunks[1].num_frames == 81
    with pytest.raises(InputValidationError, match="outside"):
        plan.chunk_for_output_frame(500)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0,), "num_audio_frames"),
        ((-5,), "num_audio_frames"),
        ((10.0,), "integer"),
        ((True,), "integer"),
        ((100, 80), "4n\\+1"),
        ((100, 81, 8), "4n\\+1"),
        ((100, 81, 81), "smaller"),
        ((100, 81, 85), "smaller"),
        ((100, 1), "at least 5"),
        ((100, 81, 0), "at least 1"),
        ((100, 2001), "too large"),
        ((100, 81, 9, 0), "max_frames"),
    ],
)
def test_invalid_settings_are_rejected(args, match):
    with pytest.raises(InputValidationError, match=match) as err:
        plan_chunks(*args)
    assert err.value.code == "E_INPUT_VALIDATION" and err.value.fix


def test_error_suggests_nearest_valid_values():
    with pytest.raises(InputValidationError, match="Use 77 or 81"):
        plan_chunks(100, 80)
