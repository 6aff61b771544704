"""Sampling maths as pure functions over a model callable (k-diffusion style): timestep schedules,
guidance, the samplers (Euler, UniPC, step-distill), per-chunk seeds and the step caches. Nothing
here knows about chunks, jobs, VAEs or ComfyUI; the streaming engine (``infinitetalk_core.stream``)
builds the model callable.
"""
from .distill import distill_timesteps, sample_flow_distill
from .guidance import (
    ALL_PASSES,
    COND,
    DROP_AUDIO,
    DROP_TEXT,
    UNCOND,
    APGState,
    GuidanceConfig,
    apg_update,
    combine_guidance,
    guidance_passes,
    guide_cfg,
    guide_single,
)
from .sampler import euler_step, guided_velocity, sample_flow_euler, write_context
from .schedule import flow_sigmas, flow_timesteps, shift_timesteps, step_sizes
from .seeds import chunk_noise, chunk_seed, step_noise, step_seed
from .unipc import sample_flow_unipc, unipc_timesteps

__all__ = [
    "ALL_PASSES", "APGState", "COND", "DROP_AUDIO", "DROP_TEXT", "GuidanceConfig", "UNCOND",
    "apg_update", "chunk_noise", "chunk_seed", "combine_guidance", "distill_timesteps", "euler_step",
    "flow_sigmas", "flow_timesteps", "guidance_passes", "guide_cfg", "guide_single", "guided_velocity",
    "sample_flow_distill", "sample_flow_euler", "sample_flow_unipc", "shift_timesteps", "step_noise",
    "step_seed", "step_sizes", "unipc_timesteps", "write_context",
]
