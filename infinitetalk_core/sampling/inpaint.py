"""Partial denoising and region-limited sampling over source latents (video dubbing), pure tensor maths.

- ``denoise`` < 1 (as ComfyUI's KSampler denoise and WanVideoWrapper's denoise_strength): the schedule
  of ``steps`` is kept and only its last round(steps·denoise) steps run; the chunk starts from the
  source latents noised to that step's σ: x = (1 − σ)·source + σ·ε (flow matching's forward process).
- ``SourcePin`` keeps a region of the latent on the source: after every update to level σ the kept
  region is replaced by the source noised to σ with the chunk's own noise ε, so at σ = 0 it is the
  source exactly and the model only ever generates inside the region it may change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputValidationError

DENOISE_FIX = "Use 1.0 to generate from noise, or 0.3-0.8 to keep the source's motion (a video input)."


def check_denoise(denoise: object) -> float:
    """The denoise strength as a float in (0, 1]; InputValidationError otherwise."""
    ok = not isinstance(denoise, bool) and isinstance(denoise, (int, float)) and math.isfinite(denoise)
    if not ok or not 0.0 < float(denoise) <= 1.0:
        raise InputValidationError(f"denoise must be a number in (0, 1], got {denoise!r}.", DENOISE_FIX)
    return float(denoise)


def denoise_start_step(steps: int, denoise: float) -> int:
    """Index of the first step that runs: the last max(1, round(steps·denoise)) of ``steps`` steps run."""
    run = max(1, int(math.floor(steps * check_denoise(denoise) + 0.5)))
    return steps - min(run, steps)


def partial_timesteps(timesteps: torch.Tensor, denoise: float) -> torch.Tensor:
    """[S+1] -> the tail [S'+1] that a partial denoise runs (the whole schedule at denoise 1)."""
    return timesteps[denoise_start_step(timesteps.numel() - 1, denoise):]


def noised_source(source: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """(1 − σ)·source + σ·noise: the source latents at noise level σ (σ = t / 1000)."""
    sigma = torch.as_tensor(sigma, dtype=source.dtype, device=source.device).reshape(-1)[:1]
    return (1 - sigma) * source + sigma * noise.to(source)


@dataclass(frozen=True)
class SourcePin:
    """Keeps ``keep`` (1 = source, 0 = generated; soft values blend) of the latent on the source.

    source, noise: [C, T, h, w]; keep: [1, T, h, w] (or broadcastable). Calling it with (x, σ) returns
    x·(1 − keep) + noised_source(σ)·keep, exactly the noised source where keep is 1.
    """

    source: torch.Tensor
    noise: torch.Tensor
    keep: torch.Tensor

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        keep = self.keep.to(device=x.device, dtype=x.dtype)
        target = noised_source(self.source.to(device=x.device, dtype=x.dtype), self.noise, sigma)
        return x * (1 - keep) + target * keep


__all__ = ["DENOISE_FIX", "SourcePin", "check_denoise", "denoise_start_step", "noised_source",
           "partial_timesteps"]
