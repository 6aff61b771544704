"""Shape checks and broadcasting of the DiT's inputs, with errors that say what to pass instead."""

from __future__ import annotations

import torch

from ..errors import InputValidationError
from .config import DiTConfig


def token_gate(gate: torch.Tensor, grid: tuple[int, int, int], dtype, device) -> torch.Tensor:
    """[T, h/2, w/2] or [L] -> [1, L, 1] in the activation dtype (patch tokens in frame-row-column order)."""
    tokens = grid[0] * grid[1] * grid[2]
    if gate.numel() != tokens:
        raise InputValidationError(
            f"audio_gate has {gate.numel()} values ({list(gate.shape)}); the latent has {tokens} patch tokens "
            f"({grid[0]} x {grid[1]} x {grid[2]}).",
            "Give one gate value per patch token: [latent frames, h/2, w/2].",
        )
    return gate.reshape(1, tokens, 1).to(device=device, dtype=dtype)


def broadcast(value: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """``value`` [batch or 1, ...] -> [batch, ...] (a leading 1 is expanded without a copy)."""
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise InputValidationError(
        f"{name} has batch size {value.shape[0]}, the latents have {batch}.",
        f"Give {name} with batch size 1 (shared) or {batch}.",
    )


def audio_items(audio, batch: int) -> list[torch.Tensor]:
    """The DiT's ``audio`` argument (tensor or list) -> one [P_i, F, 5, L, C] tensor per batch entry."""
    if torch.is_tensor(audio):
        if audio.ndim == 5 and batch == 1:
            return [audio]
        if audio.ndim == 6:
            audio = list(audio.unbind(0))
        else:
            raise InputValidationError(
                f"audio tensor has shape {list(audio.shape)} for a batch of {batch}.",
                "Pass [B, P, F, 5, L, C], or a list of B tensors [P_i, F, 5, L, C].",
            )
    items = list(audio)
    if len(items) != batch:
        raise InputValidationError(
            f"audio has {len(items)} entries for a batch of {batch}.",
            "Pass one audio tensor [P_i, F, 5, L, C] per batch entry.",
        )
    return items


def check_latent(x: torch.Tensor, cfg: DiTConfig) -> tuple[int, int, int]:
    """Validate [B, in_dim, T, h, w] and return the patch grid (T/pt, h/ph, w/pw)."""
    if x.ndim != 5 or x.shape[1] != cfg.in_dim:
        raise InputValidationError(
            f"latent input has shape {list(x.shape)} after adding y; expected [B, {cfg.in_dim}, T, h, w].",
            "Pass x [B, 16, T, h, w] and y [B, 20, T, h, w].",
        )
    if any(n % p for n, p in zip(x.shape[2:], cfg.patch_size)):
        raise InputValidationError(
            f"latent size {list(x.shape[2:])} is not divisible by the patch size {list(cfg.patch_size)}.",
            "Use a resolution divisible by 16 pixels.",
        )
    return tuple(n // p for n, p in zip(x.shape[2:], cfg.patch_size))  # type: ignore[return-value]


def context_items(context, batch: int, text_len: int, text_dim: int) -> list[torch.Tensor]:
    """The DiT's ``context`` ([Lt_i, text_dim] list or [B, Lt, text_dim]) -> one checked entry per sample."""
    items = list(context) if not torch.is_tensor(context) else list(context.unbind(0))
    if len(items) == 1 and batch > 1:
        items = items * batch
    if len(items) != batch:
        raise InputValidationError(
            f"context has {len(items)} prompts for a batch of {batch}.",
            "Pass one text-encoder output per batch entry.",
        )
    for c in items:
        if c.ndim != 2 or c.shape[0] > text_len or c.shape[1] != text_dim:
            raise InputValidationError(
                f"context entry has shape {list(c.shape)}; expected [tokens ≤ {text_len}, {text_dim}].",
                "Pass the unpadded umT5 output of each prompt (the model pads to 512 itself).",
            )
    return items


def check_audio_items(items: list[torch.Tensor], cfg, expected_frames: int) -> None:
    """Each entry must be [1 or 2 speakers, F, window, layers, channels] (``cfg``: the AudioConfig)."""
    for a in items:
        ok = a.ndim == 5 and a.shape[0] in (1, 2) and a.shape[1] == expected_frames and a.shape[2] == cfg.window
        if not ok or a.shape[3] * a.shape[4] != cfg.feature_dim:
            raise InputValidationError(
                f"audio entry has shape {list(a.shape)}; "
                f"expected [1 or 2 speakers, {expected_frames}, {cfg.window}, "
                f"layers, channels] with layers·channels = {cfg.feature_dim}.",
                f"Give {expected_frames} video frames of audio windows for "
                f"{1 + (expected_frames - 1) // cfg.vae_scale} latent frames.",
            )


def check_y(y: torch.Tensor, x: torch.Tensor) -> None:
    """y must cover the same latent frames and size as x."""
    if y.ndim != 5 or y.shape[2:] != x.shape[2:]:
        raise InputValidationError(
            f"y has shape {list(y.shape)} but x has {list(x.shape)}.",
            "Build y [1, 20, T, h, w] for the same latent frames and size as x.",
        )


def check_clip(clip_fea: torch.Tensor | None, tokens: int, clip_dim: int) -> None:
    """clip_fea must be [B or 1, tokens, clip_dim]."""
    if clip_fea is None or clip_fea.ndim != 3 or tuple(clip_fea.shape[1:]) != (tokens, clip_dim):
        got = "missing" if clip_fea is None else f"of shape {list(clip_fea.shape)}"
        raise InputValidationError(
            f"clip_fea is {got}; expected [B or 1, {tokens}, {clip_dim}].",
            "Pass the CLIP vision tokens (penultimate block, all 257) of the reference frame.",
        )


__all__ = ["audio_items", "broadcast", "check_audio_items", "check_clip", "check_latent", "check_y",
           "context_items", "token_gate"]
