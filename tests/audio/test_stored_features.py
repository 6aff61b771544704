"""Whole-run features held as bfloat16 (issue 9, item 6): dtype, no full-length float32 copy while
encoding, closeness to the float32 features, and job fingerprints that do not change with the storage."""
from __future__ import annotations

import copy
import importlib
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from infinitetalk_core.audio import (
    STORED_DTYPE,
    bundled_config,
    chunk_audio_windows,
    encode_audio_features,
    encode_stored_features,
    wav2vec2_from_config,
)
from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.host import tensor_digest
from infinitetalk_core.stream.validation import _check_audio

EMB_TOL = {"atol": 1e-3, "rtol": 1e-4}  # test_features.py's float32 parity with the reference
BF16_HALF_ULP = 2.0 ** -8  # relative: round-to-nearest into 8 significant bits


def _long_wave(audio_golden, repeats: int) -> np.ndarray:
    return np.tile(audio_golden["wave_16k_loudnorm"].numpy(), repeats)


def test_stored_features_are_bf16_roundings_of_the_float32_ones(tiny_encoder, audio_golden):
    stored = encode_stored_features(tiny_encoder, audio_golden["wave_16k_loudnorm"].numpy())
    full = encode_audio_features(tiny_encoder, audio_golden["wave_16k_loudnorm"].numpy())
    assert STORED_DTYPE == torch.bfloat16 and stored.features.dtype == torch.bfloat16
    assert stored.features.shape == full.shape == audio_golden["emb"].shape
    assert torch.equal(stored.features, full.to(torch.bfloat16))  # one rounding, nothing else changed
    golden = audio_golden["emb"]  # the reference's float32 features: float32 tolerance + half a bf16 ulp
    error = (stored.features.float() - golden).abs()
    assert bool((error <= EMB_TOL["atol"] + (EMB_TOL["rtol"] + BF16_HALF_ULP) * golden.abs()).all())
    assert 1e-3 < float(error.max()) < 1e-2  # measured 0.0078 (features up to 3.5): really rounded


def test_segmented_storage_equals_rounded_float32(tiny_encoder, audio_golden):
    """Windows written one by one into the bf16 tensor: the same as rounding the float32 result."""
    wave = _long_wave(audio_golden, 3)
    kwargs = {"segment_seconds": 4, "context_seconds": 1}
    stored = encode_stored_features(tiny_encoder, wave, **kwargs)
    assert torch.equal(stored.features, encode_audio_features(tiny_encoder, wave, **kwargs).to(torch.bfloat16))


@pytest.mark.parametrize("kwargs", [{}, {"segment_seconds": 4, "context_seconds": 1}])
def test_digest_is_that_of_the_float32_features(tiny_encoder, audio_golden, kwargs):
    """Job fingerprints hash the float32 features, as Audio Encode did when it held them: job folders made
    then still match, and the digest does not depend on the storage dtype."""
    wave = _long_wave(audio_golden, 3)
    full = encode_audio_features(tiny_encoder, wave, **kwargs)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        stored = encode_stored_features(tiny_encoder, wave, dtype=dtype, **kwargs)
        assert stored.features.dtype == dtype
        assert stored.digest == tensor_digest(full)
    assert stored.digest != tensor_digest(stored.features.to(torch.bfloat16))
    other = encode_stored_features(tiny_encoder, wave[:-640], **kwargs)  # one frame shorter
    assert other.digest != stored.digest


def test_audio_encode_node_holds_bf16_and_fingerprints_float32(tiny_encoder, audio_golden):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pack_loader import PACK_MODULE, load_pack

    nodes = load_pack().NODE_CLASS_MAPPINGS
    loaders = importlib.import_module(f"{PACK_MODULE}.nodes.loaders")
    wav2vec = loaders.Wav2VecEncoder(tiny_encoder, "wav2vec2_tiny", torch.float32)
    wave = audio_golden["wave_16k_loudnorm"]
    audio = {"waveform": wave.reshape(1, 1, -1), "sample_rate": 16000}
    two = {"waveform": torch.flip(wave, [0]).reshape(1, 1, -1), "sample_rate": 16000}
    feats, _, frames, _ = nodes["InfiniteTalkAudioEncode"]().encode(wav2vec, audio, False, audio_2=two)
    expected = [encode_audio_features(tiny_encoder, w.numpy()) for w in (wave, torch.flip(wave, [0]))]
    assert frames == expected[0].shape[0] and len(feats.features) == 2
    for held, full in zip(feats.features, expected):
        assert held.dtype == torch.bfloat16 and torch.equal(held, full.to(torch.bfloat16))
    # what the job fingerprint used when the node held float32 features (nodes/run.py _feature_digests)
    assert feats.fingerprint == "|".join(tensor_digest(f) for f in expected)


def _feature_heavy_encoder():
    """A wav2vec2 whose features outweigh everything else encoding allocates (8 layers x 64 wide, a
    4-channel CNN), so that a full-length float32 copy of them would be the largest allocation."""
    config = dict(bundled_config()[0], conv_dim=[4] * 7, hidden_size=64, num_hidden_layers=8,
                  num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=4)
    return wav2vec2_from_config(config, seed=0)


def _allocations(fn) -> list[int]:
    """Sizes (bytes) of the CPU allocations ``fn()`` makes, from the profiler's memory events."""
    profiler = pytest.importorskip("torch.profiler")
    event_types = pytest.importorskip("torch._C._profiler")
    with profiler.profile(activities=[profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()

    def walk(events):
        for event in events:
            yield event
            yield from walk(event.children)

    try:  # private profiler API (torch 2.x): skip rather than fail where it moved
        tree = prof.profiler.kineto_results.experimental_event_tree()
        allocation = event_types._EventType.Allocation
    except AttributeError as exc:
        pytest.skip(f"no profiler allocation events in this torch: {exc}")
    sizes = [e.extra_fields.alloc_size for e in walk(tree) if e.tag == allocation]
    if not sizes:
        pytest.skip("the profiler recorded no allocations")
    return [size for size in sizes if size > 0]


def test_no_full_length_float32_copy_while_encoding():
    encoder = _feature_heavy_encoder()
    wave = (0.1 * np.random.default_rng(0).standard_normal(240 * 16000)).astype(np.float32)
    kwargs = {"segment_seconds": 8, "context_seconds": 2}  # small windows: small attention matrices
    frames, layers, width = 6000, encoder.num_layers, encoder.hidden_size
    full_fp32 = frames * layers * width * 4  # 12.3 MB
    stored = []
    sizes = _allocations(lambda: stored.append(encode_stored_features(encoder, wave, **kwargs)))
    assert stored[0].features.shape == (frames, layers, width)
    assert max(sizes) == full_fp32 // 2  # the bf16 result itself is the largest allocation
    # everything else is per window or per CNN segment (the largest: oneDNN's 2 MB for a 10 s conv)
    assert sorted(sizes)[-2] < full_fp32 // 4
    # the detector works: the float32 path allocates a full-length float32 tensor (its result)
    assert max(_allocations(lambda: encode_audio_features(encoder, wave, **kwargs))) >= full_fp32


def test_bf16_storage_gives_a_bf16_dit_the_same_windows(tiny_encoder, audio_golden):
    """The DiT casts each chunk's windows to its compute dtype: from bf16-stored features (upcast to
    float32 by the engine) a bf16 DiT gets bit for bit the windows it got from float32 features."""
    full = encode_audio_features(tiny_encoder, _long_wave(audio_golden, 2))
    stored = full.to(STORED_DTYPE)
    for start, frames, padding in ((0, 81, "mirror"), (72, 81, "mirror"), (150, 81, "silence")):
        from_full = chunk_audio_windows(full, start, frames, padding=padding)
        from_stored = chunk_audio_windows(stored, start, frames, padding=padding).float()
        assert torch.equal(from_stored.to(torch.bfloat16), from_full.to(torch.bfloat16))
        relative = (from_stored - from_full).abs() / from_full.abs().clamp(min=1e-30)
        assert float(relative.max()) <= BF16_HALF_ULP


def test_fp16_storage_clamps_out_of_range_values_with_a_warning(tiny_encoder, audio_golden, caplog):
    """fp16 tops out at 65504; bf16 has float32's range. Real wav2vec2 features are far below either."""
    loud = copy.deepcopy(tiny_encoder)
    with torch.no_grad():
        last = loud.model.encoder.layers[-1].final_layer_norm
        last.weight.mul_(3e4)
        last.bias.mul_(3e4)
    wave = audio_golden["wave_16k_loudnorm"].numpy()
    full = encode_audio_features(loud, wave)
    assert float(full[:, -1].abs().max()) > 65504
    with caplog.at_level(logging.WARNING, logger="infinitetalk_core.audio.features"):
        half = encode_stored_features(loud, wave, dtype=torch.float16)
    assert "clamped" in caplog.text
    assert bool(torch.isfinite(half.features).all()) and float(half.features.abs().max()) == 65504
    assert half.digest == tensor_digest(full)  # the identity of the encoding, not of the clamped copy
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infinitetalk_core.audio.features"):
        kept = encode_stored_features(loud, wave)
    assert "clamped" not in caplog.text and torch.equal(kept.features, full.to(torch.bfloat16))


def test_non_finite_features_found_in_any_slice():
    """The input check reads the features in slices (no whole-run bool tensor): a NaN in the last one."""
    persons = [torch.zeros(9000, 2, 4, dtype=torch.bfloat16)]
    plan = SimpleNamespace(num_audio_frames=9000)
    _check_audio(persons, plan, None)
    persons[0][8999, 1, 3] = float("nan")
    with pytest.raises(InputValidationError, match="NaN"):
        _check_audio(persons, plan, None)
