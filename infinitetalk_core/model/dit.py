"""The Wan2.1-I2V DiT with InfiniteTalk's audio modules (spec §1).

Architecture of Wan-Video/Wan2.1 ``wan/modules/model.py`` and MeiGen-AI/InfiniteTalk
``wan/modules/multitalk_model.py`` (Apache-2.0), re-written from the spec; ``state_dict()`` keys are
exactly the reference names (``blocks.0.self_attn.q.weight``, ``audio_proj.proj1.weight``, ...). With
``config.audio is None`` it is a plain Wan2.1 I2V DiT without audio keys.

Calling convention (``InfiniteTalkDiT.forward``), B = batch of guidance passes / samples:

- ``x`` [B, 16, T, h, w] noisy latents (h, w = latent size, divisible by the patch size).
- ``t`` [B], [1] or a scalar: timesteps on the 0..1000 scale.
- ``context``: a list of B text-encoder outputs [Lt_i, text_dim] of any lengths ≤ text_len (unpadded,
  zero-padded to text_len inside, no attention mask: padded tokens take part, as in the reference), or a
  tensor [B, Lt, text_dim].
- ``clip_fea`` [B or 1, 257, clip_dim] CLIP tokens; ``y`` [B or 1, 20, T, h, w] = [mask 4 | reference
  latent 16]. A leading 1 is broadcast to B (guidance passes share them).
- ``audio`` (audio models only): a list of B tensors [P_i, F, 5, L, C] (F = 4·(T−1)+1 video frames,
  P_i = 1 or 2 speakers), or a tensor [B, P, F, 5, L, C], or [P, F, 5, L, C] when B = 1. A batch may mix
  a two-speaker conditional pass with the one-speaker zero "null audio" pass. Null audio is zeros
  [1, F, 5, L, C] (it still goes through audio_proj's biases, as in the reference), not None.
- ``ref_target_masks`` [3, h, w] or [B, 3, h, w] (person 1, person 2, background) or None: needed only
  by two-speaker samples; the x_ref_attn_map routing is computed only for them.
- Returns [B, 16, T, h, w] float32 (the flow velocity).

Activations run in ``compute_dtype`` (default: the patch embedding's weight dtype if it is fp32/fp16/bf16,
else x's dtype, e.g. for fp8-stored weights behind casting ``operations``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputValidationError
from .attention import resolve_backend
from .audio_modules import AudioProjModel
from .blocks import CLIP_TOKENS, DiTBlock, Head
from .condition_cache import ConditionCache
from .config import DiTConfig
from .dit_inputs import (audio_items, broadcast, check_audio_items, check_clip, check_latent, check_y, context_items,
                         token_gate)
from .rope import RopeTables, rope_tables

log = logging.getLogger(__name__)
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class BlockCacheCall:
    """One DiT call's link to a step cache (see ``InfiniteTalkDiT.forward``): ``reuse`` [B, L, dim] skips
    the blocks; otherwise ``residual`` is filled with the blocks' output minus input."""

    reuse: torch.Tensor | None = None
    residual: torch.Tensor | None = None


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] timesteps -> [B, dim] float64 [cos(t·ω) | sin(t·ω)], ω_i = 10000^(−i/(dim/2)), cos half first."""
    half = dim // 2
    angles = t.double()[:, None] * torch.pow(
        10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half
    )
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ImageProjection(nn.Module):
    """CLIP tokens -> DiT width (``img_emb.proj.{0,1,3,4}``): LayerNorm, Linear, GELU, Linear, LayerNorm."""

    def __init__(self, clip_dim: int, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        ops, kw = operations, dict(device=device, dtype=dtype)
        self.proj = nn.Sequential(
            ops.LayerNorm(clip_dim, **kw),
            ops.Linear(clip_dim, clip_dim, **kw),
            nn.GELU(),
            ops.Linear(clip_dim, dim, **kw),
            ops.LayerNorm(dim, **kw),
        )  # eps 1e-5 here

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        return self.proj(clip_fea)


class InfiniteTalkDiT(nn.Module):
    """Wan2.1 I2V DiT (+ InfiniteTalk audio when ``config.audio`` is set). See the module docstring."""

    def __init__(
        self, config: DiTConfig, operations=nn, device=None, dtype=None, attention_backend: str = "auto"
    ):
        super().__init__()
        if config.clip_dim <= 0:
            raise InputValidationError(
                "This DiT config has no CLIP image projection (a text-to-video model).",
                "InfiniteTalk needs the Wan2.1 I2V 14B model (in_dim 36).",
            )
        ops, kw, dim = operations, dict(device=device, dtype=dtype), config.dim
        self.config, self.attention_backend = config, attention_backend
        self.attention_preference: str | None = None  # a host's attention flag, honoured by "auto"
        self.patch_embedding = ops.Conv3d(
            config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size, **kw
        )
        self.text_embedding = nn.Sequential(
            ops.Linear(config.text_dim, dim, **kw), nn.GELU(approximate="tanh"), ops.Linear(dim, dim, **kw)
        )
        self.time_embedding = nn.Sequential(
            ops.Linear(config.freq_dim, dim, **kw), nn.SiLU(), ops.Linear(dim, dim, **kw)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim, **kw))
        self.blocks = nn.ModuleList(DiTBlock(config, ops, **kw) for _ in range(config.num_layers))
        self.head = Head(config, ops, **kw)
        self.img_emb = ImageProjection(config.clip_dim, dim, ops, **kw)
        if config.audio is not None:
            self.audio_proj = AudioProjModel(config.audio, ops, **kw)

    # ------------------------------------------------------------------ inputs
    def _compute_dtype(self, x: torch.Tensor, compute_dtype: torch.dtype | None) -> torch.dtype:
        weight_dtype = self.patch_embedding.weight.dtype
        return compute_dtype or (weight_dtype if weight_dtype in _COMPUTE_DTYPES else x.dtype)

    def embed_time(
        self, t: torch.Tensor, batch: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """t -> e [B, dim], e0 [B, 6, dim], both returned in float32.

        The MLPs run in float32 when their weights are float32 (the reference's fp32 island), else in the
        activation dtype ``dtype`` (bf16 weights cannot take fp32 input through plain torch.nn).
        """
        t = broadcast(torch.as_tensor(t).flatten(), batch, "t")
        if self.time_embedding[0].weight.dtype == torch.float32:
            dtype = torch.float32
        e = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim).to(dtype)).float()
        e0 = self.time_projection(e.to(dtype)).float().unflatten(1, (6, self.config.dim))
        return e, e0

    def embed_text(self, context, batch: int, dtype: torch.dtype, device,
                   cache: ConditionCache | None = None) -> torch.Tensor:
        """[Lt_i, text_dim] list or [B, Lt, text_dim] -> [B, text_len, dim], zero-padded before the MLP.
        With ``cache``, each distinct prompt tensor is embedded once (see ``ConditionCache``)."""
        items = context_items(context, batch, self.config.text_len, self.config.text_dim)
        pad = lambda c: F.pad(c.to(device=device, dtype=dtype), (0, 0, 0, self.config.text_len - c.shape[0]))  # noqa: E731
        if cache is None:
            return self.text_embedding(torch.stack([pad(c) for c in items]))
        return torch.cat([cache.get("text", c, lambda c=c: self.text_embedding(pad(c)[None])) for c in items])

    def embed_image(self, clip_fea: torch.Tensor, batch: int, dtype: torch.dtype, device,
                    cache: ConditionCache | None = None) -> torch.Tensor:
        """CLIP tokens [B or 1, 257, clip_dim] -> [B, 257, dim] (embedded once per tensor with ``cache``)."""
        project = lambda c: self.img_emb(c.to(device=device, dtype=dtype))  # noqa: E731
        if cache is None:
            return project(broadcast(clip_fea, batch, "clip_fea"))
        return broadcast(cache.get("image", clip_fea, lambda: project(clip_fea)), batch, "clip_fea")

    def embed_audio(
        self, audio, batch: int, frames: int, dtype: torch.dtype, device, cache: ConditionCache | None = None
    ) -> tuple[list, list[int], torch.Tensor]:
        """-> (per-sample tokens [T, P_i·context_tokens, output_dim], persons per sample, audio_proj output
        [ΣP_i, T, context_tokens, output_dim]). With ``cache``, each distinct audio tensor is projected once."""
        items = audio_items(audio, batch)
        check_audio_items(items, self.config.audio, 1 + self.config.audio.vae_scale * (frames - 1))
        persons = [a.shape[0] for a in items]
        project = lambda a: self.audio_proj(a.to(device=device, dtype=dtype))  # noqa: E731
        if cache is None:
            tokens = project(torch.cat(items))
        else:
            tokens = torch.cat([cache.get("audio", a, lambda a=a: project(a)) for a in items])
        per_sample = [p.transpose(0, 1).flatten(1, 2) for p in tokens.split(persons)]  # persons along tokens
        return per_sample, persons, tokens

    def routing(self, persons: list[int], masks, grid, device) -> dict | None:
        """Token masks [3, S] on the patch grid for the two-speaker samples (None when there are none)."""
        routed = [i for i, p in enumerate(persons) if p == 2]
        if not routed:
            return None
        if masks is None:
            raise InputValidationError(
                "Two-speaker audio needs ref_target_masks [3, h, w] (person 1, person 2, background).",
                "Pass the speakers' masks, or one speaker's audio.",
            )
        masks = masks if masks.ndim == 4 else masks[None]
        masks = broadcast(masks, len(persons), "ref_target_masks")
        token_masks = F.interpolate(
            masks[routed].to(device=device, dtype=torch.float32), size=grid[1:], mode="nearest"
        )
        return {
            "masks": {i: (m > 0).flatten(1) for i, m in zip(routed, token_masks)},
            "frame_tokens": grid[1] * grid[2],
        }

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        t,
        context,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        audio=None,
        ref_target_masks: torch.Tensor | None = None,
        *,
        audio_gate: torch.Tensor | None = None,
        attention_backend: str | None = None,
        compute_dtype: torch.dtype | None = None,
        debug: dict | None = None,
        block_cache: BlockCacheCall | None = None,
        condition_cache: ConditionCache | None = None,
    ) -> torch.Tensor:
        """x [B, 16, T, h, w] -> velocity [B, 16, T, h, w] float32. See the module docstring for the inputs.

        ``debug``: a dict that receives named intermediates (e, e0, text_context, img_context, patch_tokens,
        audio_tokens, block{i}.{audio_attn_out, out, x_ref_attn_map, audio_q_pos, audio_k_pos}).
        ``block_cache`` (step caches): with ``reuse`` set, every block is skipped and ``reuse`` is added
        to this call's patch tokens (text, CLIP and audio embeddings are skipped too: only the blocks use
        them); otherwise the blocks run and ``residual`` receives their output minus their input.
        ``audio_gate`` [T, h/2, w/2] or [L] (one value per patch token, 0..1): multiplies every block's
        audio cross-attention output per token, so tokens at 0 receive no audio at all (dubbing one
        person among several).
        ``condition_cache``: one chunk's ``ConditionCache``; the text, CLIP and audio embeddings of
        tensors it has seen are reused instead of recomputed (every step of a chunk passes the same ones).
        """
        cfg, batch, device = self.config, x.shape[0], x.device
        dtype = self._compute_dtype(x, compute_dtype)
        backend = resolve_backend(attention_backend or self.attention_backend, device, dtype,
                                  self.attention_preference)
        if y is not None:
            check_y(y, x)
            x = torch.cat([x, broadcast(y, batch, "y").to(x)], dim=1)
        grid = check_latent(x, cfg)
        check_clip(clip_fea, CLIP_TOKENS, cfg.clip_dim)
        # frame-row-column order, made contiguous once: a transposed stream would make every block's
        # norms copy it and its adds run strided (~2 ms per block at dim 1024 on a CPU)
        tokens = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2).contiguous()
        e, e0 = self.embed_time(
            t.to(device) if torch.is_tensor(t) else torch.tensor(t, device=device), batch, dtype
        )
        if block_cache is not None and block_cache.reuse is not None:
            tokens = tokens + block_cache.reuse.to(tokens)
            return self.unpatchify(self.head(tokens, e), grid).float()
        block_input = tokens
        text = self.embed_text(context, batch, dtype, device, condition_cache)
        image = self.embed_image(clip_fea, batch, dtype, device, condition_cache)
        ctx = torch.cat([image, text], dim=1).to(dtype)
        audio_kw, audio_tokens = self._audio_inputs(
            audio, ref_target_masks, batch, grid, dtype, device, condition_cache
        )
        if audio_kw is not None and audio_gate is not None:
            audio_kw["gate"] = token_gate(audio_gate, grid, dtype, device)
        rope = self.rope_tables(grid, device, dtype)
        if debug is not None:
            debug.update(
                {"e": e, "e0": e0, "text_context": text, "img_context": image, "patch_tokens": tokens}
            )
            if audio_tokens is not None:
                debug["audio_tokens"] = audio_tokens
        for i, block in enumerate(self.blocks):
            block_debug = {} if debug is not None else None
            tokens = block(tokens, e0, ctx, rope, backend, audio_kw, block_debug)
            if debug is not None:
                debug.update({f"block{i}.{k}": v for k, v in block_debug.items()})
                debug[f"block{i}.out"] = tokens
        if block_cache is not None:
            block_cache.residual = tokens - block_input
        return self.unpatchify(self.head(tokens, e), grid).float()

    def rope_tables(self, grid: tuple[int, int, int], device, dtype: torch.dtype) -> RopeTables:
        """The 3-D RoPE tables of ``grid`` on ``device`` in ``dtype``, built once and kept (every step of
        every chunk has the same grid), so no forward recomputes angles on the CPU or copies them."""
        cache = self.__dict__.setdefault("_rope_cache", {})
        key = (grid, str(device), dtype)
        if key not in cache:
            cache.clear()  # one size at a time: a new resolution replaces the old tables
            cache[key] = rope_tables(grid, self.config.rope_split, device, dtype)
        return cache[key]

    def step_cache_indicator(self, t: torch.Tensor, x: torch.Tensor, use_e0: bool = True) -> torch.Tensor:
        """TeaCache's indicator for timestep t: e0 [1, 6, dim] (time projection) or e [1, dim], float32."""
        dtype = self._compute_dtype(x, None)
        e, e0 = self.embed_time(torch.as_tensor(t, device=x.device).flatten()[:1], 1, dtype)
        return e0 if use_e0 else e

    def _audio_inputs(self, audio, masks, batch, grid, dtype, device, cache=None):
        if self.config.audio is None:
            if audio is not None:
                raise InputValidationError(
                    "Audio was given to a DiT without InfiniteTalk audio weights.",
                    "Load the InfiniteTalk (or MultiTalk) audio file with the base model.",
                )
            return None, None
        if audio is None:
            raise InputValidationError(
                "audio is missing for an InfiniteTalk model.",
                "For the null-audio guidance pass give zeros [1, F, 5, layers, channels].",
            )
        per_sample, persons, tokens = self.embed_audio(audio, batch, grid[0], dtype, device, cache)
        return {
            "tokens": per_sample,
            "grid": grid,
            "routing": self.routing(persons, masks, grid, device),
        }, tokens

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, pt·ph·pw·C] (C fastest) -> [B, C, T, h, w]."""
        (pt, ph, pw), c = self.config.patch_size, self.config.out_dim
        x = x.view(x.shape[0], *grid, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B C T pt H ph W pw
        return x.reshape(x.shape[0], c, *(n * p for n, p in zip(grid, (pt, ph, pw))))


__all__ = ["BlockCacheCall", "InfiniteTalkDiT", "ImageProjection", "sinusoidal_embedding"]
