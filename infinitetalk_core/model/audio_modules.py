"""InfiniteTalk's audio additions: the audio projector, the per-block audio cross-attention and the
two-speaker routing (spec §1.6–1.7).

Architecture of MeiGen-AI/InfiniteTalk ``wan/modules/multitalk_model.py`` (AudioProjModel),
``wan/modules/attention.py`` (SingleStreamMutiAttention) and ``wan/utils/multitalk_utils.py``
(Apache-2.0), re-written from the spec; state-dict names are the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import AudioConfig
from .rope import apply_rope, cos_sin, rope_1d_angles

# Routing constants of the reference (class_range 24, class_interval 4): person 1 lives in RoPE
# positions [0, 4], person 2 in [20, 24], background at 12, far from both.
PERSON_RANGES = ((0.0, 4.0), (20.0, 24.0))
BACKGROUND_POSITION = 12.0


def assemble_audio_windows(audio: torch.Tensor, vae_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent-frame audio windows from per-video-frame windows (spec §1.6).

    audio [P, F, W, L, C] with F = 1 + vae_scale·(T−1) ->
    first [P, 1, W, L, C] (video frame 0's window) and latter [P, T−1, W+vae_scale−1, L, C]: for each
    group of ``vae_scale`` video frames, slots ≤ centre of its first frame, the centre of the middle
    frames and slots ≥ centre of its last frame (a contiguous run of wav2vec frames).
    """
    centre = audio.shape[2] // 2
    groups = audio[:, 1:].unflatten(1, (-1, vae_scale))  # [P, T-1, vae_scale, W, L, C]
    latter = torch.cat(
        [groups[:, :, 0, : centre + 1], groups[:, :, 1:-1, centre], groups[:, :, -1, centre:]], dim=2
    )
    return audio[:, :1], latter


class AudioProjModel(nn.Module):
    """wav2vec2 windows -> ``context_tokens`` audio tokens per latent frame (state-dict ``audio_proj``)."""

    def __init__(self, cfg: AudioConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        ops, kw = operations, dict(device=device, dtype=dtype)
        self.cfg = cfg
        self.proj1 = ops.Linear(cfg.window * cfg.feature_dim, cfg.intermediate_dim, **kw)
        self.proj1_vf = ops.Linear(cfg.window_vf * cfg.feature_dim, cfg.intermediate_dim, **kw)
        self.proj2 = ops.Linear(cfg.intermediate_dim, cfg.intermediate_dim, **kw)
        self.proj3 = ops.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.output_dim, **kw)
        self.norm = ops.LayerNorm(cfg.output_dim, eps=1e-5, **kw)  # torch default eps, as the reference

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [P, F, W, L, C] -> tokens [P, T, context_tokens, output_dim], T = 1 + (F−1)/vae_scale."""
        first, latter = assemble_audio_windows(audio, self.cfg.vae_scale)
        first = torch.relu(self.proj1(first.flatten(2)))  # flatten order (window, layer, channel)
        latter = torch.relu(self.proj1_vf(latter.flatten(2)))
        hidden = torch.relu(self.proj2(torch.cat([first, latter], dim=1)))
        tokens = self.proj3(hidden).unflatten(-1, (self.cfg.context_tokens, self.cfg.output_dim))
        return self.norm(tokens)


def x_ref_attn_map(q: torch.Tensor, k: torch.Tensor, token_masks: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    """How much each token attends to each mask region of the first latent frame (spec §1.7).

    q, k [L, H, D] post-RoPE self-attention q/k of one sample; token_masks [M, S] {0, 1} on the patch
    grid, S = ``frame_tokens``. Returns [M, L] float32: softmax(q·k_refᵀ/√D) summed over each mask's
    keys, divided by its area, averaged over the first 2·(H//2) heads (the reference's two head groups
    of H//2; an odd last head is ignored).

    softmax(q·kᵀ)·V with V = masks / area is exactly that sum, so the map is one fused attention call
    (``F.scaled_dot_product_attention``, float32 accumulation inside the kernel, q's dtype out): the
    [heads, L, S] probabilities never exist. V is zero-padded to the head size so the flash kernel
    takes it on CUDA; only its first M columns are read back.
    """
    heads, head_dim = 2 * (q.shape[1] // 2), q.shape[-1]
    masks = token_masks.to(torch.float32)
    area = masks.sum(1, keepdim=True).clamp_min(1.0)  # an empty mask gives 0 instead of the reference's NaN
    values = q.new_zeros(frame_tokens, max(head_dim, masks.shape[0]))
    values[:, : masks.shape[0]] = (masks / area).t().to(q.dtype)
    out = F.scaled_dot_product_attention(
        q[None, :, :heads].transpose(1, 2),  # [1, h, L, D]
        k[None, :frame_tokens, :heads].transpose(1, 2),  # [1, h, S, D]
        values.expand(1, heads, *values.shape),  # [1, h, S, D]: no copy per head
    )
    return out[0, :, :, : masks.shape[0]].float().mean(0).t()


def routing_positions(attn_map: torch.Tensor) -> torch.Tensor:
    """1-D RoPE positions of the audio queries from an x_ref_attn_map [3, L] -> [L] float32.

    Each token takes the class of its largest score; person scores are min–max normalised over all
    tokens into that person's range, background gets a constant.
    """
    scaled = []
    for row, (low, high) in zip(attn_map[:2], PERSON_RANGES):
        unit = (row - row.min()) / (row.max() - row.min() + 1e-8)  # 1e-8 as the reference
        scaled.append(unit * (high - low) + low)
    scaled.append(torch.full_like(attn_map[0], BACKGROUND_POSITION))
    return torch.stack(scaled).gather(0, attn_map.argmax(0, keepdim=True))[0]


def audio_key_positions(context_tokens: int, frames: int, device=None) -> torch.Tensor:
    """Positions of two speakers' audio keys: person 1's tokens at the centre of its range, then person 2's.

    -> [frames · 2 · context_tokens] (the same pattern repeated per latent frame).
    """
    centres = torch.tensor([sum(r) / 2 for r in PERSON_RANGES], device=device)
    return centres.repeat_interleave(context_tokens).repeat(frames)


class AudioCrossAttention(nn.Module):
    """Audio cross-attention local to each latent frame (state-dict name ``audio_cross_attn``).

    No q/k norm (the reference's qk_norm is False for this module); K and V come from one ``kv_linear``.
    """

    def __init__(self, dim: int, audio_dim: int, num_heads: int, operations=nn, device=None, dtype=None):
        super().__init__()
        ops, kw = operations, dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_linear = ops.Linear(dim, dim, **kw)
        self.kv_linear = ops.Linear(audio_dim, 2 * dim, **kw)
        self.proj = ops.Linear(dim, dim, **kw)

    def forward(
        self,
        x: torch.Tensor,
        audio: list[torch.Tensor],
        grid: tuple[int, int, int],
        q_positions: dict[int, torch.Tensor],
        backend: str,
        debug: dict | None = None,
    ) -> torch.Tensor:
        """x [B, L, dim] (already norm_x'ed); audio: per sample [T, P·tokens, audio_dim];
        q_positions: sample index -> [L] routing positions (two-speaker samples only) -> [B, L, dim].

        Samples with the same audio length attend in one kernel call; queries of latent frame f only
        see the audio tokens of frame f.
        """
        frames = grid[0]
        q = self.q_linear(x).unflatten(-1, (self.num_heads, self.head_dim))  # [B, L, H, D]
        out = torch.empty_like(q) if len({a.shape[1] for a in audio}) > 1 else None
        for n_tokens in sorted({a.shape[1] for a in audio}):  # n_tokens = persons · context_tokens
            idx = [i for i, a in enumerate(audio) if a.shape[1] == n_tokens]
            kv = self.kv_linear(torch.stack([audio[i] for i in idx]))  # [G, T, N, 2·dim], K then V
            k, v = kv.unflatten(-1, (2, self.num_heads, self.head_dim)).unbind(-3)
            qg = q if len(idx) == len(audio) else q[idx]  # no copy in the common one-group case
            if idx[0] in q_positions:  # two speakers: L-RoPE pulls each token towards its speaker's audio
                k_pos = audio_key_positions(n_tokens // 2, frames, device=x.device)
                k = apply_rope(k.flatten(1, 2), *cos_sin(rope_1d_angles(k_pos, self.head_dim)[:, None]))
                k = k.unflatten(1, (frames, n_tokens))
                q_pos = torch.stack([q_positions[i] for i in idx])  # [G, L]
                qg = apply_rope(qg, *cos_sin(rope_1d_angles(q_pos, self.head_dim)[:, :, None]))
                if debug is not None:
                    debug["audio_k_pos"] = k_pos
            qg = qg.unflatten(1, (frames, -1)).flatten(0, 1)  # [G·T, S, H, D]: attention per latent frame
            attn = attention(qg, k.flatten(0, 1), v.flatten(0, 1), backend)
            attn = attn.unflatten(0, (len(idx), frames)).flatten(1, 2)
            if len(idx) == len(audio):
                return self.proj(attn.flatten(2))
            out[idx] = attn
        return self.proj(out.flatten(2))
