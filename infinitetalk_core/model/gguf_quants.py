"""GGML block quantization -> float, in torch (runs on whatever device the bytes are on).

Every function here takes the raw bytes of one tensor as a uint8 tensor and returns float32 values in
file order; ``dequantize`` reshapes them to the logical shape and casts once to the compute dtype. The
block layouts are llama.cpp's ``ggml-common.h`` (``block_q4_0`` ...); ``gguf.quants.dequantize`` (numpy)
is the reference the tests hold these against, never the production path (it runs on the CPU only).

Layouts (QK_K = 256 elements per K-quant super-block, ``half`` = IEEE fp16, little-endian):

- Q8_0 (32 el., 34 B): half d, int8 q[32]; x = d·q.
- Q4_0 (32 el., 18 B): half d, q[16] nibbles, low nibble of byte j = element j, high = element j+16;
  x = d·(q − 8). Q4_1 (20 B): half d, half m, the same nibbles; x = d·q + m.
- Q5_0 (32 el., 22 B): half d, uint32 qh (bit j = 5th bit of element j), nibbles as Q4_0; x = d·(q − 16).
  Q5_1 (24 B): half d, half m, qh, nibbles; x = d·q + m.
- Q4_K (256 el., 144 B): half d, half dmin, 12 B of 6-bit (scale, min) pairs for 8 sub-blocks of 32,
  q[128]: bytes 32c..32c+31 hold sub-block 2c in their low and 2c+1 in their high nibbles;
  x = d·scale·q − dmin·min.
- Q5_K (256 el., 176 B): as Q4_K plus qh[32] before q: bit s of qh[l] is the 5th bit of element l of
  sub-block s.
- Q6_K (256 el., 210 B): ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16] (one per 16
  elements), half d last; x = d·scale·(q − 32).
- Q3_K (256 el., 110 B): hmask[32], q[64] (2 bits), 12 B of 6-bit scales (one per 16 elements, minus 32),
  half d; element 128h + 32j + l takes bits 2j of q[32h + l] and bit 4h + j of hmask[l] (clear = −4);
  x = d·scale·q. Q2_K (256 el., 84 B): scales[16] (low nibble scale, high nibble min), q[64] as Q3_K,
  half d, half dmin; x = d·scale·q − dmin·min.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

QK_K = 256
# elements per block, bytes per block, for every block type this module dequantizes
BLOCK_SIZES: dict[str, tuple[int, int]] = {
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q4_K": (QK_K, 144),
    "Q5_K": (QK_K, 176),
    "Q6_K": (QK_K, 210),
    "Q3_K": (QK_K, 110),
    "Q2_K": (QK_K, 84),
}
PLAIN_TYPES: dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SUPPORTED_TYPES = ("F32", "F16", "BF16", *BLOCK_SIZES)


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 at byte ``start`` of every block, as float32 [n, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 2k]: all low nibbles, then all high nibbles (the Q4_0/Q5_0 element order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 8k] of 0/1: bit j of byte i is element 8i + j (a little-endian bit field)."""
    shifts = torch.arange(8, device=qh.device, dtype=torch.uint8)
    return ((qh.unsqueeze(-1) >> shifts) & 1).flatten(-2)


# The in-place ops below work on fresh float tensors (never on the input bytes): they keep the transient
# memory of the largest 14B weight (70 M elements) near one float32 copy, not three.


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:34].contiguous().view(torch.int8).float().mul_(_half(blocks, 0))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return _nibbles(blocks[:, 2:18]).float().sub_(8).mul_(_half(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _nibbles(blocks[:, 4:20]).float().mul_(_half(blocks, 0)).add_(_half(blocks, 2))


def _five_bit(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    return (_nibbles(qs) | (_bits(qh) << 4)).float()


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    return _five_bit(blocks[:, 2:6], blocks[:, 6:22]).sub_(16).mul_(_half(blocks, 0))


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    return _five_bit(blocks[:, 4:8], blocks[:, 8:24]).mul_(_half(blocks, 0)).add_(_half(blocks, 2))


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes of 6-bit values -> (scales [n, 8], mins [n, 8]) as float32.

    Sub-blocks 0-3 keep their 6 bits in the low bits of bytes 0-3 (scale) and 4-7 (min); sub-blocks
    4-7 take 4 bits from bytes 8-11 (low nibble scale, high nibble min) and their top 2 bits from the
    top bits of bytes 0-3 (scale) and 4-7 (min).
    """
    s0, s1, s2 = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([s0 & 63, (s2 & 0x0F) | ((s0 >> 6) << 4)], dim=-1)
    mins = torch.cat([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], dim=-1)
    return scales.float(), mins.float()


def _k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 128] -> [n, 8, 32]: 32-byte chunk c gives sub-block 2c (low nibbles) and 2c+1 (high)."""
    chunks = qs.unflatten(1, (4, 32))
    return torch.stack([chunks & 0x0F, chunks >> 4], dim=2).flatten(1, 2)


def _k_affine(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """d·scale·q − dmin·min per sub-block (llama.cpp's association: (d·scale)·q − (dmin·min))."""
    scales, mins = _k_scales(blocks[:, 4:16])
    step = (_half(blocks, 0) * scales).unsqueeze(-1)
    offset = (_half(blocks, 2) * mins).unsqueeze(-1)
    return q.float().mul_(step).sub_(offset).flatten(1)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    return _k_affine(blocks, _k_nibbles(blocks[:, 16:144]))


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, device=blocks.device, dtype=torch.uint8).view(1, 8, 1)
    high = (blocks[:, 16:48].unsqueeze(1) >> shifts) & 1  # [n, 8 sub-blocks, 32]
    return _k_affine(blocks, _k_nibbles(blocks[:, 48:176]) | (high << 4))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    ql = blocks[:, 0:128].unflatten(1, (2, 2, 32))  # [n, half, first/second 32 bytes, 32]
    qh = blocks[:, 128:192].unflatten(1, (2, 32))  # [n, half, 32]
    low = torch.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], dim=2)
    high = torch.stack([qh & 3, (qh >> 2) & 3, (qh >> 4) & 3, qh >> 6], dim=2)
    q = (low | (high << 4)).float().sub_(32).reshape(-1, 16, 16)  # 16 groups of 16, one scale each
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    return q.mul_((_half(blocks, 208) * scales).unsqueeze(-1)).flatten(1)


def _two_bit(qs: torch.Tensor) -> torch.Tensor:
    """[n, 64] -> [n, 2, 4, 32]: element 128h + 32j + l is bits 2j..2j+1 of byte 32h + l."""
    shifts = (2 * torch.arange(4, device=qs.device, dtype=torch.uint8)).view(1, 1, 4, 1)
    return (qs.unflatten(1, (2, 32)).unsqueeze(2) >> shifts) & 3


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, device=blocks.device, dtype=torch.uint8).view(1, 2, 4, 1)
    high = (blocks[:, 0:32].view(-1, 1, 1, 32) >> shifts) & 1  # bit 4h + j of hmask[l]
    q = _two_bit(blocks[:, 32:96]).float().sub_(4 * (1 - high.float())).reshape(-1, 16, 16)
    packed = blocks[:, 96:108]
    low = torch.cat([packed[:, 0:8] & 0x0F, packed[:, 0:8] >> 4], dim=-1)
    top = packed[:, 8:12]
    high2 = torch.cat([top & 3, (top >> 2) & 3, (top >> 4) & 3, top >> 6], dim=-1)
    scales = (low | (high2 << 4)).float() - 32
    return q.mul_((_half(blocks, 108) * scales).unsqueeze(-1)).flatten(1)


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    q = _two_bit(blocks[:, 16:80]).float().reshape(-1, 16, 16)
    packed = blocks[:, 0:16]
    step = (_half(blocks, 80) * (packed & 0x0F).float()).unsqueeze(-1)
    offset = (_half(blocks, 82) * (packed >> 4).float()).unsqueeze(-1)
    return q.mul_(step).sub_(offset).flatten(1)


_DEQUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
    "Q3_K": _q3_k,
    "Q2_K": _q2_k,
}


def storage_bytes(qtype: str, numel: int) -> int:
    """Bytes that ``numel`` elements take in ``qtype`` (a whole number of blocks)."""
    if qtype in PLAIN_TYPES:
        return numel * PLAIN_TYPES[qtype].itemsize
    block, size = BLOCK_SIZES[qtype]
    return numel // block * size


def dequantize(
    raw: torch.Tensor, qtype: str, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Raw GGUF tensor bytes (uint8, any shape) of type ``qtype`` -> a ``dtype`` tensor of ``shape``.

    Computes in float32 on ``raw``'s device and rounds once to ``dtype``. Raises ValueError for a type
    outside SUPPORTED_TYPES or a byte count that does not match ``shape``.
    """
    numel = 1
    for d in shape:
        numel *= int(d)
    if qtype not in SUPPORTED_TYPES:
        supported = ", ".join(SUPPORTED_TYPES)
        raise ValueError(f"GGUF tensor type {qtype} is not supported (supported: {supported})")
    if raw.numel() != storage_bytes(qtype, numel) or (qtype in BLOCK_SIZES and numel % BLOCK_SIZES[qtype][0]):
        raise ValueError(f"{raw.numel()} bytes do not hold a {qtype} tensor of shape {list(shape)}")
    flat = raw.reshape(-1)
    if qtype in PLAIN_TYPES:
        return flat.view(PLAIN_TYPES[qtype]).reshape(tuple(shape)).to(dtype)
    values = _DEQUANTIZERS[qtype](flat.view(-1, BLOCK_SIZES[qtype][1]))
    return values.reshape(tuple(shape)).to(dtype)
