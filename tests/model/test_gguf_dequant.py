"""Our torch GGML dequantization equals the gguf package's numpy reference, type by type, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infinitetalk_core.model.gguf_quants import BLOCK_SIZES, PLAIN_TYPES, dequantize, storage_bytes
from tests.loading.gguf_fixtures import K_QUANTIZERS, quantize, random_blocks, reference_dequantize

BLOCK_TYPES = sorted(BLOCK_SIZES)


def _rows(qtype: str, rows: int = 3, blocks_per_row: int = 2, seed: int = 0) -> tuple[np.ndarray, tuple]:
    """Random valid blocks as a [rows, row bytes] array and the logical shape they hold."""
    block, size = BLOCK_SIZES[qtype]
    raw = random_blocks(qtype, rows * blocks_per_row, seed=seed).reshape(rows, blocks_per_row * size)
    return raw, (rows, blocks_per_row * block)


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_block_types_equal_the_reference_exactly(qtype):
    raw, shape = _rows(qtype)
    ours = dequantize(torch.from_numpy(raw), qtype, shape)
    reference = torch.from_numpy(reference_dequantize(raw, qtype))
    assert ours.dtype == torch.float32 and ours.shape == shape
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0", "Q6_K"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compute_dtype_is_one_rounding_of_the_float32_values(qtype, dtype):
    raw, shape = _rows(qtype, seed=3)
    reference = torch.from_numpy(reference_dequantize(raw, qtype))
    assert torch.equal(dequantize(torch.from_numpy(raw), qtype, shape, dtype), reference.to(dtype))


@pytest.mark.parametrize("qtype", sorted(PLAIN_TYPES))
def test_plain_types_read_their_bytes(qtype):
    values = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    raw = quantize(values.numpy(), qtype) if qtype != "F32" else values.numpy()
    as_bytes = torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(-1).copy())
    expected = torch.from_numpy(reference_dequantize(np.asarray(raw), qtype).reshape(4, 8))
    assert torch.equal(dequantize(as_bytes, qtype, (4, 8)), expected)


def test_shapes_beyond_two_dims_and_flat_bytes():
    """orig_shape tensors (stored reshaped) dequantize from their flat bytes to any logical shape."""
    raw, (rows, cols) = _rows("Q8_0", rows=4, blocks_per_row=1)
    flat = torch.from_numpy(raw.reshape(-1).copy())
    reference = torch.from_numpy(reference_dequantize(raw, "Q8_0")).reshape(2, 2, 2, 16)
    assert torch.equal(dequantize(flat, "Q8_0", (2, 2, 2, 16)), reference)


# measured 0.0054 / 0.022 / 0.038 / 0.077 / 0.042 / 0.037 / 0.084 / 0.076 (seed 5); bounds ~15 % above
@pytest.mark.parametrize("qtype, bound", [("Q8_0", 0.0065), ("Q6_K", 0.027), ("Q5_K", 0.045), ("Q4_K", 0.09),
                                          ("Q5_0", 0.05), ("Q5_1", 0.045), ("Q4_0", 0.1), ("Q4_1", 0.09)])
def test_test_quantizers_round_trip_within_their_bit_budget(qtype, bound):
    """The fixtures' quantizers (ours for K-quants, gguf's otherwise) make bytes whose reference
    dequantization is the input up to the type's rounding: relative Frobenius error on N(0, 1)."""
    values = np.random.default_rng(5).standard_normal((8, 512)).astype(np.float32)
    back = reference_dequantize(quantize(values, qtype), qtype)
    error = np.linalg.norm(back - values) / np.linalg.norm(values)
    assert error < bound, (qtype, error)
    assert error > bound / 8, (qtype, error)  # not suspiciously exact either: the bytes really are quantized


def test_k_quantizers_exist_for_the_types_gguf_cannot_make():
    assert set(K_QUANTIZERS) == {"Q4_K", "Q5_K", "Q6_K"}


def test_wrong_sizes_and_types_are_refused():
    raw, shape = _rows("Q4_K", rows=1, blocks_per_row=1)
    with pytest.raises(ValueError, match="do not hold a Q4_K tensor"):
        dequantize(torch.from_numpy(raw), "Q4_K", (1, 512))
    with pytest.raises(ValueError, match="IQ4_NL is not supported"):
        dequantize(torch.from_numpy(raw), "IQ4_NL", shape)
    assert storage_bytes("Q4_K", 5120 * 5120) == 5120 * 5120 // 256 * 144
    assert storage_bytes("BF16", 10) == 20


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_cuda_equals_cpu(qtype):
    raw, shape = _rows(qtype, rows=64, blocks_per_row=4, seed=7)
    cpu = dequantize(torch.from_numpy(raw), qtype, shape, torch.bfloat16)
    gpu = dequantize(torch.from_numpy(raw).cuda(), qtype, shape, torch.bfloat16)
    assert torch.equal(gpu.cpu(), cpu)
