"""Streaming generation: pure planning (this package's root) and the engine (``host``,
``conditioning``, ``generate``, ``job``; import those modules directly).

Root exports are the pure, host-independent planning pieces: chunk plan, reference frames, buckets and
speaker masks. The sampling maths (schedules, guidance, samplers, seeds, step caches) lives in
``infinitetalk_core.sampling``.
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

__all__ = [
    "BUCKET_TABLES", "ChunkPlan", "FPS", "OVERFLOW_MODES", "REFERENCE_STRATEGIES", "ResizeCrop",
    "StreamPlan", "bucket_for", "default_shift", "latent_frames_for", "latent_size", "plan_chunks",
    "reference_frame_for_chunk", "reference_frame_indices", "resize_crop_geometry", "resize_crop_nearest",
    "source_frames_needed", "source_index_at_time", "source_speaker_masks", "speaker_masks",
    "tokens_per_latent_frame", "validate_chunk_settings", "wrap_frame_index",
]
