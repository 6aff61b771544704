"""Up-front checks of a streaming run: every bad input is reported before any model call."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputValidationError
from .host import TextContexts
from .plan import StreamPlan
from .references import reference_frame_indices
from .dub_mask import DubMask
from .settings import SVI_MOTION_FRAMES, StreamSettings

SIZE_MULTIPLE = 16  # VAE 8x and DiT patch 2x


def _fail(what: str, fix: str) -> None:
    raise InputValidationError(what, fix)


def _check_references(references, plan: StreamPlan, settings: StreamSettings) -> None:
    for attr in ("num_frames", "fps", "size", "frame", "fingerprint"):
        if not hasattr(references, attr):
            _fail(
                f"references has no '{attr}'; it is not a reference-frame source.",
                "Wrap the image/video with sources.TensorReference or sources.VideoFileReference.",
            )
    height, width = references.size
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height < SIZE_MULTIPLE or width < SIZE_MULTIPLE:
        _fail(
            f"Reference frames are {height}x{width}; both sides must be multiples of {SIZE_MULTIPLE}.",
            "Resize to a bucket (stream.buckets.bucket_for) before generating.",
        )
    reference_frame_indices(
        plan, references.num_frames, references.fps, settings.reference_strategy, settings.reference_overflow
    )


def audio_persons(audio_features: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """[T, L, C], [P, T, L, C] or a list of [T, L, C] -> list of per-speaker tensors."""
    if isinstance(audio_features, torch.Tensor):
        persons = [audio_features] if audio_features.ndim == 3 else list(audio_features)
    else:
        persons = list(audio_features)
    if not 1 <= len(persons) <= 2 or any(not isinstance(p, torch.Tensor) or p.ndim != 3 for p in persons):
        _fail(
            "audio_features must be one or two speakers' features [T, layers, width].",
            "Pass encode_audio_features(...) output, one tensor per speaker.",
        )
    return persons


def _check_audio(persons: list[torch.Tensor], plan: StreamPlan, model) -> None:
    audio_cfg = getattr(getattr(model, "config", None), "audio", None)
    for i, p in enumerate(persons):
        if p.shape[0] < plan.num_audio_frames:
            _fail(
                f"Speaker {i + 1}'s audio features have {p.shape[0]} frames; the plan needs "
                f"{plan.num_audio_frames}.",
                "Plan the chunks from the features' length (plan_chunks(T)).",
            )
        if p.shape[1:] != persons[0].shape[1:]:
            _fail(
                "The speakers' audio features have different shapes.", "Encode both with the same wav2vec2."
            )
        if audio_cfg is not None and p.shape[1] * p.shape[2] != audio_cfg.feature_dim:
            _fail(
                f"Audio features are {p.shape[1]}x{p.shape[2]} per frame; the model expects "
                f"{audio_cfg.feature_dim} values (layers x width).",
                "Use the wav2vec2 model the InfiniteTalk weights were trained with (chinese-wav2vec2-base).",
            )
        # in slices of 4096 frames: a whole-run check would allocate one bool per value (0.83 GB per hour)
        if not all(bool(torch.isfinite(p[a:a + 4096]).all()) for a in range(0, p.shape[0], 4096)):
            _fail(f"Speaker {i + 1}'s audio features contain NaN or infinite values.", "Re-encode the audio.")


def _check_text(text: TextContexts, model) -> None:
    if not isinstance(text, TextContexts):
        _fail(
            f"text must be a TextContexts, got {type(text).__name__}.",
            "Wrap the encoder outputs: TextContexts.single(positive, negative).",
        )
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    if text.text_dim != cfg.text_dim:
        _fail(
            f"Text contexts are {text.text_dim} wide; the model expects {cfg.text_dim}.",
            "Use the umt5-xxl text encoder (4096 wide) that Wan 2.1 uses.",
        )
    longest = max(t.shape[0] for pair in text.chunks for t in pair)
    if longest > cfg.text_len:
        _fail(
            f"A text context has {longest} tokens; the model takes at most {cfg.text_len}.",
            "Shorten the prompt.",
        )


def _check_masks(masks: torch.Tensor | None, persons: int, size: tuple[int, int]) -> None:
    lat = (size[0] // 8, size[1] // 8)
    if masks is None:
        if persons == 2:
            _fail(
                "Two speakers need ref_target_masks [3, h, w] (speaker 1, speaker 2, background).",
                "Build them with stream.masks.speaker_masks(..., num_speakers=2).",
            )
        return
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (3, *lat):
        _fail(
            f"ref_target_masks has shape {tuple(getattr(masks, 'shape', ()))}; "
            f"expected (3, {lat[0]}, {lat[1]}).",
            "Build them with stream.masks.speaker_masks for the bucket size.",
        )


def _check_state(state, plan: StreamPlan, size: tuple[int, int]) -> None:
    if state is None:
        return
    if not 0 <= state.next_chunk <= plan.num_chunks:
        _fail(f"Resume state points at chunk {state.next_chunk} of {plan.num_chunks}.", "Start a new job.")
    if state.next_chunk > 0:
        expected = (3, plan.context_frames, *size)
        got = None if state.context_pixels is None else tuple(state.context_pixels.shape)
        if got != expected:
            _fail(f"Resume state holds context frames {got}; expected {expected}.", "Start a new job.")


def _check_dub(dub_mask, references, settings: StreamSettings) -> None:
    if settings.denoise < 1.0 and references.num_frames < 2:
        _fail(
            f"denoise {settings.denoise:g} starts every chunk from the source video's frames, but the source "
            "is a single image.",
            "Set denoise to 1.0 for an image, or load a source video (Reference Sampler's video input).",
        )
    if dub_mask is None:
        return
    if not isinstance(dub_mask, DubMask):
        _fail(f"dub_mask must be a DubMask, got {type(dub_mask).__name__}.", "Build it with DubMask(...).")
    if dub_mask.size != tuple(references.size):
        _fail(f"The dub mask is {dub_mask.size[1]}x{dub_mask.size[0]} but the frames are "
              f"{references.size[1]}x{references.size[0]}.", "Build it with DubMask.from_source_masks(masks, size).")
    if dub_mask.num_frames not in (1, references.num_frames):
        _fail(f"dub_mask has {dub_mask.num_frames} masks but the source has {references.num_frames} frames.",
              "Give one mask for the whole video, or exactly one mask per source frame.")


def _check_mode(settings: StreamSettings, plan: StreamPlan) -> None:
    if settings.mode == "svi_talk" and plan.context_frames != SVI_MOTION_FRAMES:
        _fail(f"mode svi_talk continues each clip from {SVI_MOTION_FRAMES} motion frame, but the plan carries "
              f"{plan.context_frames} context frames.",
              f"Plan with context_frames={SVI_MOTION_FRAMES} (the Streaming Sampler does this for svi_talk).")


def _check_previous(previous, plan: StreamPlan, size: tuple[int, int]) -> None:
    if (previous is not None) != plan.lead_context:
        _fail("previous_frames and a plan with lead_context go together.",
              "Plan with plan_chunks(..., lead_context=True) when continuing a clip, and only then.")
    if previous is None:
        return
    if not isinstance(previous, torch.Tensor) or previous.ndim != 4 or previous.shape[0] != 3 \
            or tuple(previous.shape[-2:]) != tuple(size):
        _fail(f"previous_frames must be [3, frames, {size[0]}, {size[1]}], got "
              f"{tuple(getattr(previous, 'shape', ()))}.", "Resize the clip to the output size first.")
    if previous.shape[1] < plan.context_frames:
        _fail(f"previous_frames has {previous.shape[1]} frames; continuing a clip needs at least the "
              f"{plan.context_frames} context frames.", "Connect a longer clip, or lower context_frames.")
    if not torch.isfinite(previous).all():
        _fail("previous_frames contains NaN or infinite values.", "Check the node that makes the frames.")


def validate_stream_inputs(
    model, plan, references, audio_features, text, settings, image_encoder, ref_target_masks, state,
    *, dub_mask=None, previous_frames=None,
) -> list[torch.Tensor]:
    """Raise InputValidationError for the first bad input; returns the per-speaker audio features."""
    if not isinstance(settings, StreamSettings):
        _fail(
            f"settings must be a StreamSettings, got {type(settings).__name__}.", "Build StreamSettings(...)."
        )
    settings.validate()
    if not isinstance(plan, StreamPlan):
        _fail(f"plan must be a StreamPlan, got {type(plan).__name__}.", "Build it with plan_chunks(...).")
    _check_references(references, plan, settings)
    persons = audio_persons(audio_features)
    _check_audio(persons, plan, model)
    _check_text(text, model)
    if image_encoder is None and getattr(getattr(model, "config", None), "clip_dim", 0) > 0:
        _fail(
            "The model needs CLIP image features, but no image encoder was given.",
            "Pass the CLIP vision model (clip_vision_h) as image_encoder.",
        )
    _check_masks(ref_target_masks, len(persons), tuple(references.size))
    _check_state(state, plan, tuple(references.size))
    _check_mode(settings, plan)
    _check_dub(dub_mask, references, settings)
    _check_previous(previous_frames, plan, tuple(references.size))
    return persons
