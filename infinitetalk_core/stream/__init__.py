"""Streaming generation: pure planning and sampling maths (this package's root) and the engine
(``host``, ``conditioning``, ``generate``, ``job``; import those modules directly).

Root exports are the pure, host-independent pieces: chunk plan, reference frames, buckets, speaker
masks, timesteps, guidance, the Euler sampler and per-chunk seeds.
"""
from .buckets import (
    BUCKET_TABLES,
    ResizeCrop,
    bucket_for,
    default_shift,
    latent_size,
    resize_crop_geometry,
    tokens_per_latent_frame,
)
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
from .masks import resize_crop_nearest, source_speaker_masks, speaker_masks
from .plan import FPS, ChunkPlan, StreamPlan, latent_frames_for, plan_chunks, validate_chunk_settings
from .references import (
    OVERFLOW_MODES,
    REFERENCE_STRATEGIES,
    reference_frame_for_chunk,
    reference_frame_indices,
    source_frames_needed,
    source_index_at_time,
    wrap_frame_index,
)
from .sampler import euler_step, sample_flow_euler, write_context
from .schedule import flow_sigmas, flow_timesteps, shift_timesteps, step_sizes
from .seeds import chunk_noise, chunk_seed

__all__ = [
    "ALL_PASSES", "APGState", "BUCKET_TABLES", "COND", "ChunkPlan", "DROP_AUDIO", "DROP_TEXT", "FPS",
    "GuidanceConfig", "OVERFLOW_MODES", "REFERENCE_STRATEGIES", "ResizeCrop", "StreamPlan", "UNCOND",
    "apg_update", "bucket_for", "chunk_noise", "chunk_seed", "combine_guidance", "default_shift",
    "euler_step", "flow_sigmas", "flow_timesteps", "guidance_passes", "guide_cfg", "guide_single",
    "latent_frames_for", "latent_size", "plan_chunks", "reference_frame_for_chunk",
    "reference_frame_indices", "resize_crop_geometry", "resize_crop_nearest", "sample_flow_euler",
    "shift_timesteps", "source_frames_needed", "source_index_at_time", "source_speaker_masks",
    "speaker_masks", "step_sizes", "tokens_per_latent_frame", "validate_chunk_settings",
    "wrap_frame_index", "write_context",
]
