"""Per-chunk seeds: deterministic, independent of order and device, chunk 0 == ComfyUI's noise."""
from __future__ import annotations

import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.sampling.seeds import MAX_SEED, chunk_noise, chunk_seed


def test_chunk_zero_uses_the_seed_like_comfyui():
    assert chunk_seed(1234, 0) == 1234
    comfy = torch.randn((1, 16, 21, 4, 6), generator=torch.manual_seed(1234), device="cpu")
    assert torch.equal(chunk_noise((16, 21, 4, 6), 1234, 0), comfy[0])


def test_seeds_are_distinct_and_stable():
    seeds = [chunk_seed(7, k) for k in range(2000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    assert chunk_seed(7, 3) != chunk_seed(8, 3)
    assert chunk_seed(7, 3) == chunk_seed(7, 3)
    assert chunk_seed(MAX_SEED, 5) >= 0


def test_any_chunk_regenerates_alone():
    shape = (16, 21, 3, 4)
    in_order = [chunk_noise(shape, 42, k) for k in range(4)]
    assert torch.equal(chunk_noise(shape, 42, 2), in_order[2])  # no dependence on earlier draws
    assert not torch.equal(in_order[1], in_order[2])


def test_dtype_and_device():
    a = chunk_noise((2, 3), 1, 1, device="cpu", dtype=torch.bfloat16)
    b = chunk_noise((2, 3), 1, 1)
    assert a.dtype == torch.bfloat16 and b.dtype == torch.float32
    assert torch.equal(a, b.to(torch.bfloat16))  # drawn in float32 first, then cast


@pytest.mark.parametrize("seed, index", [(-1, 0), (MAX_SEED + 1, 0), (1.5, 0), (True, 0), (1, -1), (1, "2")])
def test_invalid(seed, index):
    with pytest.raises(InputValidationError):
        chunk_seed(seed, index)
