"""Flow-matching Euler sampler with clean context latents (spec §5.1, §5.4), k-diffusion style.

``model_fn(x, t, passes) -> {pass_name: v}`` is a closure that already holds the chunk's
conditioning; it evaluates the requested guidance passes (guidance.py names) on the same latent and
timestep, so it may batch them into one DiT forward. Shapes: x [..., C, T, h, w] (usually
[16, 21, h, w]); t a float32 tensor [1] on x's device, on the 0..1000 scale (the shifted value the
reference feeds its DiT).

The clean context latents [..., C, Tc, h, w] are written into latent frames [0, Tc) before every
model call and after every update; the model's predictions there are discarded.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import InputValidationError
from .guidance import APGState, GuidanceConfig, combine_guidance
from .schedule import NUM_TRAIN_TIMESTEPS

ModelFn = Callable[[torch.Tensor, torch.Tensor, Sequence[str]], Mapping[str, torch.Tensor]]
StepCallback = Callable[[dict[str, Any]], None]
Pin = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, σ [1]) -> x with a region held (inpaint.py)


def write_context(x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """In place: x[..., :, :Tc, :, :] = context (cast to x's dtype/device). Returns x."""
    if context is not None:
        x[..., : context.shape[-3], :, :] = context.to(device=x.device, dtype=x.dtype)
    return x


def settle(x: torch.Tensor, context: torch.Tensor | None, pin: Pin | None, sigma: torch.Tensor) -> torch.Tensor:
    """x at level σ after an update: the pinned region put back (``pin``, e.g. inpaint.SourcePin), then
    the clean context frames written."""
    if pin is not None:
        x = pin(x, sigma)
    return write_context(x, context)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
               num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """x − v·(t − t_next)/1000 (the reference adds −v·dt: same float32 result). New tensor."""
    dt = (t - t_next) / num_train_timesteps
    return x - v * dt.to(x.device)


def guided_velocity(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, passes: Sequence[str],
                    guidance: GuidanceConfig, state: APGState
                    ) -> tuple[torch.Tensor, APGState, dict[str, torch.Tensor]]:
    """One step's guided velocity: evaluate the passes at (x, t), combine them -> (v, state, terms)."""
    return combine_guidance(model_fn(x, t, passes), guidance, state)


def _check(noise: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None) -> None:
    if noise.dim() < 4:
        raise InputValidationError(
            f"noise must be [..., C, T, h, w], got shape {tuple(noise.shape)}.",
            "Pass the chunk's latent noise.",
        )
    if timesteps.dim() != 1 or timesteps.numel() < 2:
        raise InputValidationError(
            f"timesteps must be 1-D with at least 2 values, got shape {tuple(timesteps.shape)}.",
            "Use flow_timesteps(steps, shift).",
        )
    if context is not None:
        ok = context.dim() == noise.dim() and context.shape[-3] <= noise.shape[-3]
        ok = ok and context.shape[:-3] == noise.shape[:-3] and context.shape[-2:] == noise.shape[-2:]
        if not ok:
            raise InputValidationError(
                f"context latents {tuple(context.shape)} do not fit the latent {tuple(noise.shape)}.",
                "Context latents must match the latent's channels and size and have at most as many frames.",
            )


def sample_flow_euler(
    model_fn: ModelFn,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    context_latents: torch.Tensor | None = None,
    guidance: GuidanceConfig = GuidanceConfig(),
    callback: StepCallback | None = None,
    pin: Pin | None = None,
) -> torch.Tensor:
    """Denoise one chunk: [..., C, T, h, w] noise -> final latent (context frames clean).

    timesteps: [S+1] from flow_timesteps (S steps). callback (optional) gets, after each step, a dict
    {step, total, t, x_in, x, v, denoised, guidance_terms} (denoised = x_in − σ·v, the x0 estimate
    for previews); it may raise (e.g. an interrupt) to stop sampling. The APG state is fresh here.
    pin (optional): holds a region of x (e.g. on the noised source) at the start and after every update.
    """
    _check(noise, timesteps, context_latents)
    passes = guidance.passes
    timesteps = timesteps.to(device=noise.device, dtype=torch.float32)
    sigmas = timesteps / NUM_TRAIN_TIMESTEPS
    x = settle(noise.clone(), context_latents, pin, sigmas[:1])
    state, total = APGState(), timesteps.numel() - 1
    for i in range(total):
        t, t_next = timesteps[i : i + 1], timesteps[i + 1 : i + 2]
        v, state, terms = guided_velocity(model_fn, x, t, passes, guidance, state)
        x_in, x = x, settle(euler_step(x, v, t, t_next), context_latents, pin, sigmas[i + 1 : i + 2])
        if callback is not None:
            sigma = t / NUM_TRAIN_TIMESTEPS
            callback({"step": i, "total": total, "t": t, "x_in": x_in, "x": x, "v": v,
                      "denoised": x_in - sigma * v, "guidance_terms": terms})
    return x
