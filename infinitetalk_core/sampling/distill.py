"""Few-step sampler of the lightx2v step-distill LoRAs (LightX2V's ``WanStepDistillScheduler``).

The LoRA was trained (DMD) on a fixed ladder of noise levels: for S steps σ_k = 1 − k/S before the
shift (LightX2V's 4-step configs: denoising_step_list [1000, 750, 500, 250], sample_shift 5). Each
step jumps to the model's clean estimate and re-noises it with FRESH noise to the next level:

    x0 = x − σ_i·v;   x ← (1 − σ_{i+1})·x0 + σ_{i+1}·ε_i   (the last step returns x0)

so unlike the Euler ODE it consumes one new standard-normal draw per step (``step_noise(i)``, e.g.
seeds.step_noise). Same model callable, guidance and clean-context handling as sampler.py.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import InputValidationError
from .guidance import APGState, GuidanceConfig
from .sampler import ModelFn, Pin, StepCallback, _check, guided_velocity, settle
from .schedule import NUM_TRAIN_TIMESTEPS, check_schedule, shift_timesteps

MAX_DISTILL_STEPS = 50
DEFAULT_DISTILL_SHIFT = 5.0  # sample_shift of LightX2V's wan_i2v_distill_*_4step_cfg configs
StepNoise = Callable[[int], torch.Tensor]
DISTILL_SHIFT_FIX = "Use 5 with the lightx2v distillation LoRA; 7 at 480p or 11 at 720p for the base model."


def _training_sigmas(steps: int) -> torch.Tensor:
    """[S] float32 unshifted σ_k = 1 − k/S, read from LightX2V's table where it has the entry.

    LightX2V indexes torch.linspace(1, 0, 1001) at 1000·k/S; that table is 1 ulp off 1 − k/S for
    some entries, so the table value is used whenever 1000·k/S is a whole index (S divides 1000).
    """
    table = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)
    values = []
    for k in range(steps):
        index, rest = divmod(NUM_TRAIN_TIMESTEPS * k, steps)
        values.append(table[index] if rest == 0 else torch.tensor(1.0 - k / steps, dtype=torch.float32))
    return torch.stack(values)


def distill_timesteps(steps: int, shift: float = DEFAULT_DISTILL_SHIFT) -> torch.Tensor:
    """[steps + 1] float32 CPU: the step-distill LoRA's timesteps (0..1000 scale), ending with 0.

    4 steps, shift 5: [1000, 937.5, 833.33, 625, 0] (σ shifted in float32 as LightX2V does).
    """
    check_schedule(steps, shift, MAX_DISTILL_STEPS,
                   "Use 4 steps (what the lightx2v distillation LoRA was trained for).", DISTILL_SHIFT_FIX)
    sigmas = shift_timesteps(_training_sigmas(steps), float(shift), num_train_timesteps=1)
    return torch.cat([sigmas * NUM_TRAIN_TIMESTEPS, torch.zeros(1, dtype=torch.float32)])


def _fresh_noise(step_noise: StepNoise, i: int, like: torch.Tensor) -> torch.Tensor:
    eps = step_noise(i)
    if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != tuple(like.shape):
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise InputValidationError(
            f"step_noise({i}) must return a tensor of the latent's shape {tuple(like.shape)}, got {got}.",
            "Return a fresh standard-normal tensor shaped like the noise (e.g. seeds.step_noise).",
        )
    return eps.to(device=like.device, dtype=like.dtype)


def _require_step_noise(step_noise: StepNoise | None, total: int) -> None:
    if step_noise is None and total > 1:
        raise InputValidationError(
            f"the distilled sampler needs fresh noise after each of its first {total - 1} steps, "
            "but step_noise is None.",
            "Pass step_noise=lambda i: seeds.step_noise(shape, seed, chunk_index, i).",
        )


def sample_flow_distill(
    model_fn: ModelFn,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    context_latents: torch.Tensor | None = None,
    guidance: GuidanceConfig = GuidanceConfig(1.0, 1.0),
    callback: StepCallback | None = None,
    step_noise: StepNoise | None = None,
    pin: Pin | None = None,
) -> torch.Tensor:
    """Denoise one chunk with the step-distill update: [..., C, T, h, w] noise -> final latent.

    timesteps: [S+1] from distill_timesteps (the last value is not used: the last step returns its
    x0 estimate). step_noise(i) -> fresh standard normal of the latent's shape, used to re-noise
    after step i < S−1; required when S > 1. callback: as sample_flow_euler's
    ({step, total, t, x_in, x, v, denoised, guidance_terms}). Context frames stay clean.
    """
    _check(noise, timesteps, context_latents)
    total = timesteps.numel() - 1
    _require_step_noise(step_noise, total)
    passes = guidance.passes
    timesteps = timesteps.to(device=noise.device, dtype=torch.float32)
    sigmas = timesteps / NUM_TRAIN_TIMESTEPS
    x, state = settle(noise.clone(), context_latents, pin, sigmas[:1]), APGState()
    for i in range(total):
        t = timesteps[i : i + 1]
        v, state, terms = guided_velocity(model_fn, x, t, passes, guidance, state)
        x_in, denoised = x, x - sigmas[i : i + 1] * v
        if i == total - 1:
            x = denoised.clone()
        else:
            sigma_next = sigmas[i + 1 : i + 2]
            x = (1 - sigma_next) * denoised + sigma_next * _fresh_noise(step_noise, i, denoised)
        x = settle(x, context_latents, pin, sigmas[i + 1 : i + 2])
        if callback is not None:
            callback({"step": i, "total": total, "t": t, "x_in": x_in, "x": x, "v": v,
                      "denoised": denoised, "guidance_terms": terms})
    return x
