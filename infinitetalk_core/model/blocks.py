"""Transformer block of the Wan2.1 I2V DiT with InfiniteTalk's audio cross-attention, and the head.

Architecture of Wan-Video/Wan2.1 ``wan/modules/model.py`` and MeiGen-AI/InfiniteTalk
``wan/modules/multitalk_model.py`` (Apache-2.0), re-written from the spec; state-dict names are the
reference's. Elementwise work is one pass per op over the residual stream in the activation dtype:
LayerNorm and RMSNorm keep float32 statistics inside their kernels; the modulation (shift + x·(1+scale))
and the gated residual add (x + y·gate) are single fused multiply-adds. In float32 this is the reference's
arithmetic; in bf16 the reference rounds once more (it modulates in float32), a difference bounded by the
bf16 parity test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import audio_modules
from .attention import attention
from .audio_modules import AudioCrossAttention
from .config import DiTConfig
from .rope import RopeTables

CLIP_TOKENS = 257  # CLS + 16×16 patches of ViT-H/14 at 224 px: the first 257 context tokens are image tokens


class RMSNorm(nn.Module):
    """RMSNorm over the last dim (one fused op; float32 statistics inside), weight cast to the input."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, x.shape[-1:], self.weight.to(device=x.device, dtype=x.dtype), self.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm of x [B, L, C], then shift + normed·(1 + scale): two passes, x's dtype.
    shift/scale: [B, 1, C] float32 (cast to x's dtype here; they are small)."""
    normed = F.layer_norm(x, x.shape[-1:], eps=eps)
    return torch.addcmul(shift.to(x.dtype), normed, (1 + scale).to(x.dtype))


def gated_add(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y·gate in one pass, x's dtype (gate [B, 1, C] float32)."""
    return torch.addcmul(x, y.to(x.dtype), gate.to(x.dtype))


def cast_param(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A loose parameter (modulation) in float32 on ``like``'s device (may be stored 16-bit or offloaded)."""
    return p.to(device=like.device, dtype=torch.float32)


class SelfAttention(nn.Module):
    """Full self-attention with q/k RMSNorm over the whole width and 3-D RoPE."""

    def __init__(self, dim: int, num_heads: int, eps: float, operations=nn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (operations.Linear(dim, dim, **kw) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps, **kw), RMSNorm(dim, eps, **kw)

    def forward(
        self,
        x: torch.Tensor,
        rope: RopeTables,
        backend: str,
        routing: dict | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """x [B, L, dim] -> ([B, L, dim], {sample: x_ref_attn_map [3, L]} for the samples in ``routing``).

        ``routing`` = {"masks": {sample: token masks [3, S]}, "frame_tokens": S} or None.
        """
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # noqa: E731
        q = rope.rotate(heads(self.norm_q(self.q(x))))
        k = rope.rotate(heads(self.norm_k(self.k(x))))
        out = self.o(attention(q, k, heads(self.v(x)), backend).flatten(2))
        maps = {}
        for i, masks in (routing or {}).get("masks", {}).items():  # only two-speaker samples
            maps[i] = audio_modules.x_ref_attn_map(q[i], k[i], masks, routing["frame_tokens"])
        return out, maps


class I2VCrossAttention(nn.Module):
    """Cross-attention to [257 CLIP tokens ; text tokens]: two attentions sharing q, summed before ``o``."""

    def __init__(self, dim: int, num_heads: int, eps: float, operations=nn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (operations.Linear(dim, dim, **kw) for _ in range(4))
        self.k_img, self.v_img = operations.Linear(dim, dim, **kw), operations.Linear(dim, dim, **kw)
        self.norm_q, self.norm_k = RMSNorm(dim, eps, **kw), RMSNorm(dim, eps, **kw)
        self.norm_k_img = RMSNorm(dim, eps, **kw)

    def forward(self, x: torch.Tensor, context: torch.Tensor, backend: str) -> torch.Tensor:
        """x [B, L, dim], context [B, 257 + text_len, dim] -> [B, L, dim]."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # noqa: E731
        image, text = context[:, :CLIP_TOKENS], context[:, CLIP_TOKENS:]
        q = heads(self.norm_q(self.q(x)))
        out = attention(q, heads(self.norm_k(self.k(text))), heads(self.v(text)), backend)
        out_img = attention(q, heads(self.norm_k_img(self.k_img(image))), heads(self.v_img(image)), backend)
        return self.o(out.flatten(2) + out_img.flatten(2))


class DiTBlock(nn.Module):
    """Self-attn (modulated, gated) -> text/image cross-attn -> audio cross-attn -> FFN (modulated, gated)."""

    def __init__(self, cfg: DiTConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        ops, kw, dim = operations, dict(device=device, dtype=dtype), cfg.dim
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim, **kw) / dim**0.5)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps, ops, **kw)
        self.norm3 = ops.LayerNorm(dim, eps=cfg.eps, elementwise_affine=True, **kw)
        self.cross_attn = I2VCrossAttention(dim, cfg.num_heads, cfg.eps, ops, **kw)
        self.ffn = nn.Sequential(
            ops.Linear(dim, cfg.ffn_dim, **kw),
            nn.GELU(approximate="tanh"),
            ops.Linear(cfg.ffn_dim, dim, **kw),
        )
        if cfg.audio is not None:
            self.norm_x = ops.LayerNorm(dim, eps=cfg.eps, elementwise_affine=True, **kw)
            self.audio_cross_attn = AudioCrossAttention(dim, cfg.audio.output_dim, cfg.num_heads, ops, **kw)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        rope,
        backend: str,
        audio: dict | None = None,
        debug: dict | None = None,
    ) -> torch.Tensor:
        """x [B, L, dim] in the activation dtype, e0 [B, 6, dim] float32 -> [B, L, dim].

        ``audio`` = {"tokens": per-sample [T, P·tokens, C], "grid": (T, h, w), "routing": ... | None,
        optionally "gate": [1, L, 1] per-token factor of the audio cross-attention output}.
        """
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (cast_param(self.modulation, e0) + e0).chunk(
            6, 1
        )
        y, maps = self.self_attn(
            modulate(x, shift_a, scale_a, self.eps), rope, backend, audio and audio["routing"]
        )
        x = gated_add(x, y, gate_a)
        x = x + self.cross_attn(self.norm3(x), context, backend)
        if audio is not None:
            q_positions = {i: audio_modules.routing_positions(m) for i, m in maps.items()}
            x_a = self.audio_cross_attn(
                self.norm_x(x), audio["tokens"], audio["grid"], q_positions, backend, debug
            )
            if audio.get("gate") is not None:  # dubbing one person: no audio outside the mask
                x_a = x_a * audio["gate"]
            x = x + x_a
            if debug is not None:
                debug["audio_attn_out"] = x_a
                if maps:
                    debug["x_ref_attn_map"] = torch.stack(list(maps.values()))
                    debug["audio_q_pos"] = torch.stack(list(q_positions.values()))
        return gated_add(x, self.ffn(modulate(x, shift_f, scale_f, self.eps)), gate_f)


class Head(nn.Module):
    """Affine-free LayerNorm, modulation by (head.modulation + e), Linear to patch × out channels."""

    def __init__(self, cfg: DiTConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        kw, dim = dict(device=device, dtype=dtype), cfg.dim
        self.eps = cfg.eps
        patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
        self.head = operations.Linear(dim, patch * cfg.out_dim, **kw)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim, **kw) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], e [B, dim] float32 -> [B, L, patch·out_dim] in x's dtype."""
        shift, scale = (cast_param(self.modulation, e) + e[:, None]).chunk(2, 1)
        return self.head(modulate(x, shift, scale, self.eps))
