"""Per-chunk seeds and noise: chunk k's noise depends only on (seed, k), so any chunk can be
regenerated alone (resume, re-render one chunk) and results do not depend on the device.

- chunk_seed(seed, 0) == seed, so a one-chunk run draws the same noise as ComfyUI's own
  ``prepare_noise`` (a CPU generator seeded with the seed, torch.randn over the latent's elements).
- chunk_seed(seed, k > 0) mixes (seed, k) with SplitMix64 into a 63-bit integer.
- chunk_noise draws float32 standard normals from a CPU torch.Generator, then moves/casts them,
  so CPU and GPU runs get identical noise.
- step_noise(seed, k, step) is the fresh noise a stochastic (distilled) sampler draws after a step:
  the same CPU-generator recipe on SplitMix64(chunk seed, step + 1), so it is regenerable too.

The reference instead draws every chunk's noise sequentially from the global CUDA generator, so its
chunks cannot be regenerated independently and its noise differs between devices.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputValidationError

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF  # ComfyUI seed widgets go up to 2^64 - 1
_MASK64 = (1 << 64) - 1
# XORed into the chunk seed before mixing in the step: without it, chunk 0 (whose seed is the seed
# itself) would give step s the seed of chunk s + 1.
_STEP_DOMAIN = 0x5354_4550_4E4F_4953
_REFINE_DOMAIN = 0x5245_4649_4E45_4358  # context refinement draws: a stream of their own


def _splitmix64(value: int) -> int:
    z = (value + 0x9E37_79B9_7F4A_7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & _MASK64
    return z ^ (z >> 31)


def _check_int(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InputValidationError(
            f"{name} must be an integer in 0..{maximum}, got {value!r}.",
            f"Pass a non-negative whole number for {name} (draw a random seed before calling, if wanted).",
        )
    return value


def chunk_seed(seed: int, chunk_index: int) -> int:
    """Seed of chunk ``chunk_index``: the seed itself for chunk 0, a SplitMix64 mix otherwise."""
    _check_int("seed", seed, MAX_SEED)
    _check_int("chunk_index", chunk_index, 1 << 32)
    if chunk_index == 0:
        return seed
    return _splitmix64(_splitmix64(seed) ^ chunk_index) >> 1  # 63 bits: fits any signed consumer


def chunk_noise(shape: Sequence[int], seed: int, chunk_index: int,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` (e.g. [16, 21, h, w]) for chunk ``chunk_index``.

    Drawn in float32 on a CPU generator, then moved to ``device`` and cast to ``dtype``.
    """
    generator = torch.Generator(device="cpu").manual_seed(chunk_seed(seed, chunk_index))
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=device or "cpu", dtype=dtype)


def step_seed(seed: int, chunk_index: int, step: int) -> int:
    """63-bit seed of the fresh noise a stochastic sampler draws after step ``step`` of a chunk."""
    _check_int("step", step, 1 << 32)
    mixed = _splitmix64(chunk_seed(seed, chunk_index) ^ _STEP_DOMAIN)
    return _splitmix64(mixed ^ (step + 1)) >> 1


def step_noise(shape: Sequence[int], seed: int, chunk_index: int, step: int,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` for step ``step`` of chunk ``chunk_index``.

    Depends only on (seed, chunk_index, step), on a seed of its own (not any chunk's), so it is a
    different draw from chunk_noise(seed, chunk_index). Drawn in float32 on a CPU generator like
    chunk_noise, then moved to ``device`` and cast to ``dtype``.
    """
    generator = torch.Generator(device="cpu").manual_seed(step_seed(seed, chunk_index, step))
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=device or "cpu", dtype=dtype)


def refine_noise(shape: Sequence[int], seed: int, chunk_index: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise for refining chunk ``chunk_index``'s context (depends only on (seed, chunk);
    a draw of its own, different from the chunk's noise and from every step noise)."""
    _check_int("chunk_index", chunk_index, 1 << 32)
    mixed = _splitmix64(_splitmix64(chunk_seed(seed, chunk_index) ^ _REFINE_DOMAIN)) >> 1
    generator = torch.Generator(device="cpu").manual_seed(mixed)
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=device or "cpu", dtype=dtype)
