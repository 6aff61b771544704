"""Colour matching: LAB parity with the reference (skimage maths), histogram and MKL properties, API."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.color import (
    COLOR_METHODS,
    image_to_signed,
    lab_to_rgb,
    match_colors,
    match_colors_signed,
    rgb_to_lab,
    select_color_reference,
    signed_to_image,
)
from infinitetalk_core.errors import InputValidationError

TOL = dict(atol=2e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(str(golden_dir / "color" / "color.safetensors"))


def test_lab_conversion_matches_skimage(golden):
    frames01 = ((golden["frames"][0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
    ref01 = ((golden["reference"][0, :, 0].permute(1, 2, 0) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(rgb_to_lab(frames01), golden["dbg.lab_frames"], **TOL)
    torch.testing.assert_close(rgb_to_lab(ref01), golden["dbg.lab_reference"], **TOL)


@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_reference_lab_transfer(golden, strength):
    out = match_colors_signed(golden["frames"], golden["reference"], "lab", strength)
    assert out.shape == golden["frames"].shape and out.dtype == torch.float32
    torch.testing.assert_close(out, golden[f"out_strength_{strength:g}"], **TOL)


def test_image_layout_gives_the_same_result(golden):
    frames = signed_to_image(golden["frames"])
    ref = signed_to_image(golden["reference"])
    out = match_colors(frames, ref, "lab", 1.0)
    torch.testing.assert_close(image_to_signed(out)[None], golden["out_strength_1"], **TOL)


def test_known_lab_values_and_round_trip():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    lab = rgb_to_lab(rgb)
    # white: the sRGB matrix rows sum to slightly less than D65, so a, b are tiny but not 0 (as skimage)
    assert lab[0, 0].item() == pytest.approx(100.0, abs=2e-3) and lab[0, 1:].abs().max() < 0.02
    torch.testing.assert_close(lab[1], torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(lab[2], torch.tensor([53.2408, 80.0925, 67.2032]), atol=2e-3, rtol=0)
    assert lab[3, 0].item() == pytest.approx(53.3890, abs=2e-3)
    x = torch.rand(5, 7, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=2e-5, rtol=0)
    # out-of-gamut LAB is clipped into [0, 1]; negative Z is clipped like skimage
    wild = lab_to_rgb(torch.tensor([[50.0, 200.0, -300.0], [90.0, -100.0, 250.0]]))
    assert wild.min() >= 0 and wild.max() <= 1


def _frames(n=3, h=12, w=10, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, h, w, 3, generator=g)


@pytest.mark.parametrize("method", COLOR_METHODS)
def test_strength_zero_returns_input(method):
    frames = _frames()
    assert match_colors(frames, _frames(1, seed=1), method, 0.0) is frames
    clip = image_to_signed(frames)
    assert match_colors_signed(clip, image_to_signed(_frames(1, seed=1)), method, 0) is clip


@pytest.mark.parametrize("method", COLOR_METHODS)
def test_methods_move_statistics_towards_the_reference(method):
    frames = _frames(4, 16, 16, seed=2, lo=0.1, hi=0.5)
    ref = _frames(1, 9, 7, seed=3, lo=0.4, hi=0.9)  # another size: only statistics matter
    out = match_colors(frames, ref, method, 1.0)
    assert out.shape == frames.shape and 0 <= out.min() and out.max() <= 1
    before = (frames.mean((1, 2)) - ref.mean((0, 1, 2))).abs().mean()
    after = (out.mean((1, 2)) - ref.mean((0, 1, 2))).abs().mean()
    assert after < 0.2 * before
    half = match_colors(frames, ref, method, 0.5)
    torch.testing.assert_close(half, 0.5 * frames + 0.5 * out, atol=1e-6, rtol=0)


def test_mkl_matches_mean_and_covariance():
    frames = _frames(2, 20, 20, seed=4, lo=0.3, hi=0.6)
    ref = _frames(1, 20, 20, seed=5, lo=0.3, hi=0.7)
    mix = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.7, 0.2], [0.0, 0.3, 0.6]])
    ref = (ref @ mix.T).clamp(0, 1)  # correlated channels
    out = match_colors(frames, ref, "mkl").reshape(2, -1, 3)
    ref_px = ref.reshape(-1, 3)
    for o in out:
        torch.testing.assert_close(o.mean(0), ref_px.mean(0), atol=1e-4, rtol=0)
        cov_o, cov_r = torch.cov(o.T, correction=0), torch.cov(ref_px.T, correction=0)
        torch.testing.assert_close(cov_o, cov_r, atol=2e-5, rtol=0)


def test_histogram_keeps_order_and_ties_and_reproduces_the_reference_distribution():
    g = torch.Generator().manual_seed(6)
    frames = torch.rand(2, 64, 64, 3, generator=g)
    frames[:, :8] = 0.25  # a block of equal values
    ref = torch.rand(1, 50, 40, 3, generator=g) ** 2 * 0.7 + 0.1  # another shape and distribution
    out = match_colors(frames, ref, "histogram")
    assert out[:, :8].flatten(1, 2).std(1).max() == 0  # ties stay ties
    for f, o in zip(frames, out):  # order preserving, channel by channel
        for ch in range(3):
            order = f[..., ch].flatten().argsort()
            assert (o[..., ch].flatten()[order].diff() >= -1e-6).all()
    assert out.min() >= ref.min() - 1e-6 and out.max() <= ref.max() + 1e-6
    # without ties, the output's quantiles are the reference's
    smooth = match_colors(torch.rand(1, 64, 64, 3, generator=g) ** 0.5, ref, "histogram")
    qs = torch.linspace(0.02, 0.98, 25)
    got = torch.quantile(smooth.reshape(-1, 3).T, qs, dim=1)
    want = torch.quantile(ref.reshape(-1, 3).T, qs, dim=1)
    torch.testing.assert_close(got, want, atol=5e-3, rtol=0)


def test_per_frame_reference_and_pooling():
    frames = _frames(2, 8, 8, seed=7)
    refs = torch.stack([torch.full((8, 8, 3), 0.2), torch.full((8, 8, 3), 0.8)])
    refs = refs + 0.05 * _frames(2, 8, 8, seed=8)
    per_frame = match_colors(frames, refs, "mkl", per_frame_reference=True)
    assert per_frame[0].mean() < 0.35 and per_frame[1].mean() > 0.65
    pooled = match_colors(frames, refs, "mkl")
    assert abs(pooled[0].mean() - pooled[1].mean()) < 0.05
    with pytest.raises(InputValidationError, match="one reference frame per frame"):
        match_colors(frames, refs[:1], "lab", per_frame_reference=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_keeps_dtype_and_layout(dtype):
    frames = _frames(2, 6, 6).to(dtype)
    out = match_colors(frames, _frames(1, 6, 6, seed=9), "lab")
    assert out.dtype == dtype and out.device == frames.device and out.shape == frames.shape
    single = match_colors(frames[0], frames[1], "histogram")  # [H, W, 3] is one frame
    assert single.shape == frames[0].shape


def test_flat_channel_takes_the_reference_mean():
    flat = torch.full((1, 6, 6, 3), 0.5)
    ref = _frames(1, 6, 6, seed=10)
    out = match_colors(flat, ref, "lab")
    assert torch.isfinite(out).all() and out.std((0, 1, 2)).max() < 1e-5  # one uniform colour
    expected = lab_to_rgb(rgb_to_lab(ref).reshape(-1, 3).mean(0))
    torch.testing.assert_close(out[0, 0, 0], expected, atol=1e-4, rtol=0)


def test_select_color_reference():
    first, chunk, tail = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert select_color_reference("first", first, chunk, tail) is first
    assert select_color_reference("chunk", first, chunk, tail) is chunk
    assert select_color_reference("previous_tail", first, chunk, tail) is tail
    assert select_color_reference("previous_tail", first, chunk, None) is first
    with pytest.raises(InputValidationError, match="chunk_reference"):
        select_color_reference("chunk", first)
    with pytest.raises(InputValidationError, match="unknown colour reference"):
        select_color_reference("average", first)


@pytest.mark.parametrize(
    "frames, reference, kwargs, match",
    [
        (_frames(), _frames(1), dict(method="reinhard"), "method"),
        (_frames(), _frames(1), dict(strength=1.5), "strength"),
        (_frames(), _frames(1), dict(strength=-0.1), "strength"),
        (_frames(), _frames(1), dict(strength=float("nan")), "strength"),
        (torch.rand(2, 3, 8, 8), _frames(1), {}, "\\[N, H, W, 3\\]"),
        (_frames(), torch.rand(4, 4), {}, "reference"),
        (torch.zeros(2, 4, 4, 3, dtype=torch.uint8), _frames(1), {}, "float"),
    ],
)
def test_invalid_inputs(frames, reference, kwargs, match):
    with pytest.raises(InputValidationError, match=match):
        match_colors(frames, reference, **kwargs)


def test_signed_layout_validation():
    with pytest.raises(InputValidationError, match="\\[3, N, H, W\\]"):
        match_colors_signed(torch.zeros(4, 2, 8, 8), torch.zeros(3, 1, 8, 8))
