"""The schedulers a chunk can be sampled with: one name -> (timesteps, sampler function).

- ``flow_euler``: the reference's shifted linear timesteps and Euler update (spec §5.1).
- ``unipc``: UniPC multistep (bh2, order 2) on Wan's flow-UniPC timesteps, WanVideoWrapper's default;
  better than Euler at 8-20 steps.
- ``distill``: the fixed timesteps the lightx2v step-distill LoRA was trained with (1000, 750, 500, 250
  at 4 steps, shift 5) and its update: predict x0, then re-noise to the next level with fresh noise.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import InputValidationError
from .distill import distill_timesteps, sample_flow_distill
from .sampler import sample_flow_euler
from .schedule import flow_timesteps
from .unipc import sample_flow_unipc, unipc_timesteps

SCHEDULERS = ("flow_euler", "unipc", "distill")
DISTILL_SHIFT = 5.0  # LightX2V's sample_shift for its Wan2.1 I2V 4-step distill configs


def check_scheduler(name: str) -> None:
    if name not in SCHEDULERS:
        raise InputValidationError(
            f"scheduler must be one of {', '.join(SCHEDULERS)}; got {name!r}.",
            "Use flow_euler (reference), unipc (8-20 steps) or distill (lightx2v LoRA, 4 steps).",
        )


def scheduler_timesteps(name: str, steps: int, shift: float) -> torch.Tensor:
    """[steps + 1] float32 timesteps on the 0..1000 scale (ending with 0) for the named scheduler."""
    check_scheduler(name)
    if name == "unipc":
        return unipc_timesteps(steps, shift)
    if name == "distill":
        return distill_timesteps(steps, shift)
    return flow_timesteps(steps, shift)


def scheduler_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampling function: f(model_fn, noise, timesteps, context_latents, guidance, callback[, step_noise])."""
    check_scheduler(name)
    return {"flow_euler": sample_flow_euler, "unipc": sample_flow_unipc, "distill": sample_flow_distill}[name]


__all__ = ["DISTILL_SHIFT", "SCHEDULERS", "check_scheduler", "scheduler_sampler", "scheduler_timesteps"]
