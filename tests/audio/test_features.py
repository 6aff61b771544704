"""wav2vec2 features at 25 fps versus the reference's golden tensors; long-audio segmentation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infinitetalk_core.audio import encode_audio_features, plan_segments
from infinitetalk_core.audio.features import conv_features
from infinitetalk_core.errors import AudioInputError, InputValidationError

EMB_TOL = {"atol": 1e-3, "rtol": 1e-4}


def test_intermediates_match_reference(tiny_encoder, audio_golden):
    wave = torch.from_numpy(audio_golden["wave_16k_loudnorm"].numpy())
    cnn = conv_features(tiny_encoder, wave)
    torch.testing.assert_close(cnn, audio_golden["dbg.conv_features"], **EMB_TOL)
    interp = F.interpolate(cnn.T[None], size=107, mode="linear", align_corners=True)[0].T
    torch.testing.assert_close(interp, audio_golden["dbg.interp_features"], **EMB_TOL)
    projected = tiny_encoder.model.feature_projection(interp[None])[0][0]
    torch.testing.assert_close(projected, audio_golden["dbg.feature_projection"], **EMB_TOL)


@pytest.mark.parametrize("wave_key, emb_key", [("wave_16k_loudnorm", "emb"), ("stereo_loudnorm", "stereo_emb")])
def test_features_match_reference(tiny_encoder, audio_golden, wave_key, emb_key):
    emb = encode_audio_features(tiny_encoder, audio_golden[wave_key].numpy())
    assert emb.shape == audio_golden[emb_key].shape and emb.dtype == torch.float32
    torch.testing.assert_close(emb, audio_golden[emb_key], **EMB_TOL)


def test_segmented_cnn_equals_one_pass(tiny_encoder, audio_golden):
    """Global GroupNorm statistics make the segmented CNN exact, also with tiny segments."""
    wave = torch.from_numpy(np.tile(audio_golden["wave_16k_loudnorm"].numpy(), 3))
    with torch.no_grad():
        one_pass = tiny_encoder.model.feature_extractor(wave[None])[0].T
    for seconds in (0.37, 1.0, 100.0):
        torch.testing.assert_close(conv_features(tiny_encoder, wave, segment_seconds=seconds), one_pass,
                                   atol=2e-5, rtol=1e-5)


def test_segmented_transformer_is_close_to_one_pass(tiny_encoder, audio_golden):
    """Measured (tiny model, features up to 3.6): 12.9 s clip, 4 s windows with 1 s context → max error
    0.103, mean 0.015; a 60 s clip with the defaults (40 s, 5 s) → max 0.0072, mean 0.0014. Cutting the
    clip to its first 6 s changes the reference's own one-pass features there far more (max 3.7)."""
    wave = np.tile(audio_golden["wave_16k_loudnorm"].numpy(), 3)
    single = encode_audio_features(tiny_encoder, wave, segment_seconds=60)
    stitched = encode_audio_features(tiny_encoder, wave, segment_seconds=4, context_seconds=1)
    error = (single - stitched).abs().max().item()
    assert 0 < error < 0.2
    cut = encode_audio_features(tiny_encoder, wave[: 6 * 16000], segment_seconds=60)
    assert error < (cut - single[: cut.shape[0]]).abs().max().item()


def test_pos_conv_is_exact_with_half_kernel_context(tiny_encoder):
    """The positional conv (kernel 16 here, 128 in the real model) of rows at least half a kernel away
    from a window edge does not see the window's zero padding: why context >= kernel // 2."""
    x = torch.randn(1, 120, 32, generator=torch.Generator().manual_seed(0))
    pos = tiny_encoder.model.encoder.pos_conv_embed
    half = tiny_encoder.model.config.num_conv_pos_embeddings // 2
    with torch.no_grad():
        full, part = pos(x)[0], pos(x[:, 30:90])[0]
    torch.testing.assert_close(part[half:60 - half], full[30 + half:90 - half], atol=1e-6, rtol=1e-6)
    assert (part[: half // 2] - full[30:30 + half // 2]).abs().max() > 1e-3  # edges do see the padding


def test_plan_segments_tiles_with_context():
    for total in (1, 999, 1000, 1001, 2500, 7777):
        segs = plan_segments(total, 1000, 125)
        assert segs[0].keep_start == 0 and segs[-1].keep_stop == total
        for a, b in itertools.pairwise(segs):
            assert a.keep_stop == b.keep_start
        for s in segs:
            assert s.stop - s.start == min(total, 1000)
            assert s.keep_start == 0 or s.keep_start - s.start >= 125
            assert s.keep_stop == total or s.stop - s.keep_stop >= 125
    assert len(plan_segments(1000, 1000, 125)) == 1
    with pytest.raises(InputValidationError, match="segment_seconds"):
        plan_segments(3000, 200, 100)


@pytest.mark.parametrize("num_samples, frames", [(640, 1), (18560, 28), (36480, 56), (72320, 112)])
def test_frame_count_and_short_audio(tiny_encoder, num_samples, frames):
    wave = (0.1 * np.random.default_rng(0).standard_normal(num_samples)).astype(np.float32)
    emb = encode_audio_features(tiny_encoder, wave)
    assert emb.shape == (frames, 2, 32) and torch.isfinite(emb).all()


def test_silence_gives_finite_features(tiny_encoder):
    emb = encode_audio_features(tiny_encoder, np.zeros(16000, np.float32))
    assert emb.shape == (25, 2, 32) and torch.isfinite(emb).all()


def test_bad_inputs(tiny_encoder):
    with pytest.raises(AudioInputError, match="shorter than one video frame"):
        encode_audio_features(tiny_encoder, np.zeros(639, np.float32))
    with pytest.raises(InputValidationError, match="16 kHz"):
        encode_audio_features(tiny_encoder, np.zeros(48000, np.float32), sample_rate=48000)
    with pytest.raises(InputValidationError, match="mono"):
        encode_audio_features(tiny_encoder, np.zeros((2, 16000), np.float32))
    with pytest.raises(AudioInputError, match="NaN"):
        encode_audio_features(tiny_encoder, np.full(16000, np.nan, np.float32))


def test_out_dtype_and_tensor_input(tiny_encoder, audio_golden):
    wave = audio_golden["wave_16k_loudnorm"]
    emb = encode_audio_features(tiny_encoder, wave, out_dtype=torch.bfloat16)
    assert emb.dtype == torch.bfloat16
    torch.testing.assert_close(emb.float(), audio_golden["emb"], atol=3e-2, rtol=1e-2)
