"""Flow-matching timesteps of the reference sampler (spec §5.1): linear in t, then shifted.

t_i = linspace(1000, 1, steps) (float32) followed by 0; σ = t/1000; σ' = shift·σ / (1 + (shift−1)·σ);
the DiT receives t' = 1000·σ'. Everything is float32 in the reference's operation order so the values
are bit-identical to what its DiT receives. Forward noising: x_σ = (1−σ)·x0 + σ·ε, so the model's
velocity is v = ε − x0 and x0 = x_σ − σ·v.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputValidationError

NUM_TRAIN_TIMESTEPS = 1000  # Wan 2.1 flow matching: t in [0, 1000], σ = t / 1000
MAX_STEPS = 1000
BASE_SHIFT_FIX = "Use 7 at 480p or 11 at 720p (the reference defaults); 2 with FusionX-style LoRAs."


def shift_timesteps(
    t: torch.Tensor, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """[S] -> [S]: σ' = shift·σ / (1 + (shift − 1)·σ) on the 0..1000 scale, in t's dtype."""
    s = t / num_train_timesteps
    return shift * s / (1 + (shift - 1) * s) * num_train_timesteps


def check_schedule(steps: object, shift: object, max_steps: int, steps_fix: str, shift_fix: str) -> None:
    """Raise InputValidationError unless steps is an int in 1..max_steps and shift a number in (0, 100]."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= max_steps:
        raise InputValidationError(f"steps must be an integer in 1..{max_steps}, got {steps!r}.", steps_fix)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < float(shift) <= 100:
        raise InputValidationError(f"shift must be a number in (0, 100], got {shift!r}.", shift_fix)


def flow_timesteps(steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """[steps + 1] float32 CPU: the shifted timesteps the DiT receives, ending with 0."""
    check_schedule(steps, shift, MAX_STEPS, "Use 40 for the base model, or 4-8 with a distillation LoRA.",
                   BASE_SHIFT_FIX)
    raw = np.linspace(num_train_timesteps, 1, steps, dtype=np.float32)
    t = torch.from_numpy(np.concatenate([raw, np.zeros(1, np.float32)]))
    return shift_timesteps(t, float(shift), num_train_timesteps)


def flow_sigmas(timesteps: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """[S+1] -> [S+1]: noise levels σ = t / 1000."""
    return timesteps / num_train_timesteps


def step_sizes(timesteps: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """[S+1] -> [S]: dt_i = (t_i − t_{i+1}) / 1000, in the timesteps' dtype."""
    return (timesteps[:-1] - timesteps[1:]) / num_train_timesteps
