"""Rotary position embeddings: Wan's 3-D RoPE for video tokens, InfiniteTalk's 1-D RoPE for audio routing.

Both rotate adjacent real pairs (2i, 2i+1) of each head as one complex number. The reference multiplies
complex float64 tensors. Here the angles are computed in float64 once; the video tokens' rotation
(``rotate_pairs``) runs in the activation dtype on real pairs with precomputed cos/sin tables (two fused
multiply-adds per half, written straight into the output: no float32 copy, no stack), which agrees with
the reference to ~1e-6 in float32. The small audio-routing rotation (``apply_rope``) stays in float32.

Eager PyTorch cannot rotate in one pass (4 elementwise ops: ~20 bytes per token·dim per block for q and
k). A host with a fused kernel registers it with ``set_fused_rope``: ComfyUI ships comfy-kitchen's
``apply_rope1`` (one read and one write of q or k, float32 maths inside), which takes the rotation
matrices ``[[cos, −sin], [sin, cos]]`` per pair ([1, L, 1, D/2, 2, 2] float32, ``RopeTables.matrices``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

ROPE_THETA = 10000.0


def axis_frequencies(slots: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """Frequencies of one axis with ``slots`` complex pairs: theta^(−j/slots), j < slots -> [slots] f64."""
    return theta ** (-torch.arange(slots, dtype=torch.float64) / slots)


def rope_3d_angles(grid: tuple[int, int, int], split: tuple[int, int, int], device=None) -> torch.Tensor:
    """Angles for every token of a (frames, rows, columns) grid, tokens in frame-row-column order.

    Each axis owns ``split[a]`` consecutive complex slots with its own table (dimension 2·split[a]), and
    positions are chunk-local 0..n−1 on every axis. Returns [F·R·C, sum(split)] float64.
    """
    parts = []
    for axis, (n, slots) in enumerate(zip(grid, split)):
        angle = torch.arange(n, dtype=torch.float64)[:, None] * axis_frequencies(slots)[None]  # [n, slots]
        shape = [1, 1, 1, slots]
        shape[axis] = n
        parts.append(angle.view(shape).expand(*grid, slots))
    return torch.cat(parts, dim=-1).reshape(-1, sum(split)).to(device)


def rope_1d_angles(positions: torch.Tensor, head_dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """Angles of InfiniteTalk's 1-D RoPE (float32 like the reference). positions [..., N] -> [..., N, D/2]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    return positions.float()[..., None] * inv_freq


def cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) in float32 of angles [..., D/2]."""
    return angles.cos().float(), angles.sin().float()


@dataclass(frozen=True)
class FusedRope:
    """A host's one-kernel rotation ``kernel(x [B, L, H, D], matrices) -> x's dtype`` for ``devices``."""

    kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    devices: tuple[str, ...] = ("cuda",)


_fused: list[FusedRope] = []  # at most one: the registered host kernel


def set_fused_rope(kernel: Callable | None, devices: tuple[str, ...] = ("cuda",)) -> None:
    """Rotate with ``kernel`` on ``devices`` (device types) from the next table built; None: eager again."""
    _fused.clear()
    if kernel is not None:
        _fused.append(FusedRope(kernel, tuple(devices)))


@dataclass(frozen=True)
class RopeTables:
    """One grid's 3-D RoPE: (cos, sin, −sin) [1, L, 1, D/2] in the activation dtype for ``rotate_pairs``,
    or the [1, L, 1, D/2, 2, 2] float32 rotation ``matrices`` of a host's fused kernel."""

    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    neg_sin: torch.Tensor | None = None
    matrices: torch.Tensor | None = None
    fused: FusedRope | None = None

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, H, D] with its adjacent pairs rotated -> a new tensor in x's dtype."""
        if self.fused is not None:
            return self.fused.kernel(x, self.matrices)
        return rotate_pairs(x, self.cos, self.sin, self.neg_sin)


def rope_tables(grid: tuple[int, int, int], split: tuple[int, int, int], device, dtype: torch.dtype) -> RopeTables:
    """The 3-D RoPE tables of ``grid`` on ``device``: for the host's fused kernel when it serves that
    device type, else (cos, sin, −sin) in ``dtype`` for the eager rotation."""
    angles = rope_3d_angles(grid, split)
    cos, sin = angles.cos(), angles.sin()
    fused = next((f for f in _fused if torch.device(device).type in f.devices), None)
    if fused is not None:
        rows = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [L, D/2, 2, 2]
        return RopeTables(matrices=rows.to(device=device, dtype=torch.float32)[None, :, None], fused=fused)
    cos, sin, neg_sin = (v.to(device=device, dtype=dtype)[None, :, None] for v in (cos, sin, -sin))
    return RopeTables(cos, sin, neg_sin)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neg_sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D] with adjacent pairs rotated by (cos, sin, −sin) of ``RopeTables`` -> new tensor, x's dtype."""
    pairs = x.unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    if torch.compiler.is_compiling():  # inductor fuses this into one kernel; out= on a strided view would break the graph
        return torch.stack((torch.addcmul(real * cos, imag, neg_sin), torch.addcmul(real * sin, imag, cos)), -1
                           ).flatten(-2)
    out = torch.empty_like(x)
    target = out.unflatten(-1, (-1, 2))
    torch.addcmul(real * cos, imag, neg_sin, out=target[..., 0])
    torch.addcmul(real * sin, imag, cos, out=target[..., 1])
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, L, H, D] by angles with cos/sin broadcastable to [B, L, 1, D/2].

    Computed in float32, returned in x's dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
