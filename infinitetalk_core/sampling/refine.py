"""Memory refinement of the context frames (experimental; seed 003, FlowAct-R1's idea).

Over tens of chunks, small artefacts in the context frames are copied into every next chunk and pile up
(identity and texture drift). At regular intervals the context latents are noised part of the way
(σ = ``strength``) and denoised again over a few steps of the same DiT, on a short clip made of just
those frames and conditioned on the chunk's reference frame, so accumulated artefacts are pulled back
towards the reference before they propagate. Pure maths over a model callable; the engine supplies
the model function of the short clip and the noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputValidationError
from .guidance import GuidanceConfig
from .sampler import StepCallback, ModelFn, sample_flow_euler
from .schedule import NUM_TRAIN_TIMESTEPS

MAX_REFINE_STEPS = 50


@dataclass(frozen=True)
class RefineSettings:
    """every: refine before chunks k = every, 2·every, ... (0 = off). strength: the noise level σ the
    context latents are taken back to (0 < σ <= 1). steps: Euler steps from σ down to 0."""

    every: int = 0
    strength: float = 0.3
    steps: int = 4

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def applies_to(self, chunk_index: int) -> bool:
        """True for the chunks whose context is refined first (never chunk 0: it has no context yet)."""
        return self.enabled and chunk_index > 0 and chunk_index % self.every == 0

    def extra_calls(self, guidance: GuidanceConfig) -> int:
        """DiT pass calls one refinement costs: steps x guidance passes."""
        return self.steps * len(guidance.passes)

    def validate(self) -> None:
        """Raise InputValidationError naming the bad setting."""
        _whole("refine_every", self.every, 0, 1_000_000, "Use 0 (off) or e.g. 4 (every 4th chunk).")
        _whole("refine_steps", self.steps, 1, MAX_REFINE_STEPS, "Use 4 (default) to 8.")
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 < s <= 1:
            raise InputValidationError(
                f"refine_strength must be in (0, 1], got {s!r}.",
                "Use 0.3 (default); higher repairs more and changes the context more.",
            )


def _whole(name: str, value: object, low: int, high: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputValidationError(f"{name} must be a whole number in {low}..{high}, got {value!r}.", fix)


def refine_timesteps(strength: float, steps: int) -> torch.Tensor:
    """[steps + 1] float32: t = 1000·σ, σ linear from ``strength`` down to 0 (no shift: the path is short)."""
    sigmas = torch.linspace(float(strength), 0.0, steps + 1, dtype=torch.float64)
    return (sigmas * NUM_TRAIN_TIMESTEPS).to(torch.float32)


def refine_latents(
    model_fn: ModelFn,
    latents: torch.Tensor,
    noise: torch.Tensor,
    settings: RefineSettings,
    guidance: GuidanceConfig = GuidanceConfig(),
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Noise ``latents`` [..., C, T, h, w] to σ = strength with ``noise`` (same shape) and denoise them
    over ``settings.steps`` guided Euler steps of ``model_fn`` -> refined latents (same shape).

    Nothing is written back clean during the steps: every frame is refined; the reference conditions the
    clip through the model function's y (as for chunk 0).
    """
    if noise.shape != latents.shape:
        raise InputValidationError(
            f"refinement noise {tuple(noise.shape)} does not match the latents {tuple(latents.shape)}.",
            "Draw the noise with the latents' shape.",
        )
    timesteps = refine_timesteps(settings.strength, settings.steps).to(latents.device)
    sigma = timesteps[0] / NUM_TRAIN_TIMESTEPS
    start = (1 - sigma) * latents.float() + sigma * noise.to(latents.device, torch.float32)
    return sample_flow_euler(model_fn, start, timesteps, None, guidance, callback)


__all__ = ["MAX_REFINE_STEPS", "RefineSettings", "refine_latents", "refine_timesteps"]
