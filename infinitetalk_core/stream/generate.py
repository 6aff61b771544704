"""The streaming generator: chunk after chunk, conditioned, sampled, decoded, colour-corrected.

``generate_chunks(...)`` validates everything, then returns an iterator of ``ChunkResult``. Per chunk
(spec §4.2): pick the reference frame by time, build y / context latents / CLIP features, slice the
audio windows of the chunk's range (speakers stacked; one zero speaker for the null-audio passes), draw
noise from (seed, chunk index), run the guided flow-Euler sampler with a model function that batches
the guidance passes into one DiT forward, decode, colour-correct (before the next context frames are
taken), and yield the plan's kept frames. The carried state is a small dataclass (the last M frames
after colour correction); APG buffers are fresh per chunk. Give a ``StreamState`` from a job directory
to resume: noise depends only on (seed, chunk), so a resumed run is bit-identical to an uninterrupted
one on deterministic hardware.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from ..audio import chunk_audio_windows
from ..color import match_colors_signed
from ..errors import NonFiniteError
from ..video.writer import frames_to_uint8_on_device
from .chunk_result import ChunkResult, StreamState
from .conditioning import (ChunkConditioning, build_conditioning, build_svi_conditioning, encode_clip,
                           encode_context)
from .dub import ChunkDub, chunk_dub, finish_dub
from .dub_mask import DubMask
from .model_fn import PassBatching, counting, make_model_fn
from .hooks import ChunkProgress, GenerationInterrupted, ProgressClock, StepProgress, StreamHooks
from .host import ImageEncoder, TextContexts, VideoVAE
from .plan import ChunkPlan, StreamPlan, latent_frames_for
from .references import reference_frame_for_chunk
from .source_cache import RecentFrames
from .refine_context import refine_context_pixels
from ..sampling.easycache import EasyCache
from ..sampling.inpaint import noised_source, partial_timesteps
from ..sampling.schedule import NUM_TRAIN_TIMESTEPS
from ..sampling.schedulers import scheduler_sampler, scheduler_timesteps
from ..sampling.teacache import TeaCache
from ..sampling.seeds import chunk_noise, step_noise
from .settings import StreamSettings
from .sources import ReferenceFrames
from .validation import validate_stream_inputs

log = logging.getLogger(__name__)

def generate_chunks(
    model: torch.nn.Module,
    vae: VideoVAE,
    plan: StreamPlan,
    references: ReferenceFrames,
    audio_features: Sequence[torch.Tensor] | torch.Tensor,
    text: TextContexts,
    settings: StreamSettings = StreamSettings(),
    *,
    image_encoder: ImageEncoder | None = None,
    ref_target_masks: torch.Tensor | None = None,
    state: StreamState | None = None,
    hooks: StreamHooks | None = None,
    device: torch.device | str | None = None,
    dub_mask: DubMask | None = None,
    chunk_seeds: Mapping[int, int] | None = None,
    previous_frames: torch.Tensor | None = None,
) -> Iterator[ChunkResult]:
    """Validate every input (InputValidationError before any work), then stream the chunks.

    model: InfiniteTalkDiT (or any module with its forward). audio_features: one [T, L, C] tensor per
    speaker (or [P, T, L, C]) with T == plan.num_audio_frames. ref_target_masks: [3, h, w] (required for
    two speakers; all ones by default). state: resume from a job directory (default: start at chunk 0).
    device: where sampling runs (default: the model's parameters' device). dub_mask: the region the
    model may change (the rest stays the source, see dub.py); with ``settings.denoise`` < 1 each chunk
    starts from the noised source. chunk_seeds: chunk index -> seed used for that chunk's noise instead
    of ``settings.seed`` (a re-rolled chunk). previous_frames: [3, n >= M, H, W] in [-1, 1], the clip to
    continue (its last M frames are chunk 0's context; needs a plan made with lead_context=True).
    """
    persons = validate_stream_inputs(
        model, plan, references, audio_features, text, settings, image_encoder, ref_target_masks, state,
        dub_mask=dub_mask, previous_frames=previous_frames,
    )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    h, w = (s // 8 for s in references.size)
    masks = torch.ones(3, h, w) if ref_target_masks is None else ref_target_masks.float()
    run = _Run(
        model,
        vae,
        plan,
        references,
        persons,
        text,
        settings,
        image_encoder,
        masks.to(device),
        hooks or StreamHooks(),
        device,
        partial_timesteps(scheduler_timesteps(settings.scheduler, settings.steps, settings.shift),
                          settings.denoise),
        PassBatching(settings.batch_passes),
        RecentFrames.for_run(references, plan.context_frames),
        dub_mask,
        dict(chunk_seeds or {}),
    )
    if state is None and previous_frames is not None:
        state = StreamState(0, previous_frames[:, -plan.context_frames:].float().cpu().clone())
    return _stream(run, state or StreamState())


@dataclass(frozen=True)
class _Run:
    """What stays fixed for a whole generation (validated inputs, schedule, device)."""

    model: torch.nn.Module
    vae: VideoVAE
    plan: StreamPlan
    references: ReferenceFrames
    persons: list[torch.Tensor]
    text: TextContexts
    settings: StreamSettings
    image_encoder: ImageEncoder | None
    masks: torch.Tensor
    hooks: StreamHooks
    device: torch.device
    timesteps: torch.Tensor  # the steps each chunk runs (the tail of the schedule when denoise < 1)
    batching: PassBatching
    source: RecentFrames  # the reference source with a memory of recent frames
    dub_mask: DubMask | None
    chunk_seeds: dict[int, int]

    def seed_for(self, chunk: int) -> int:
        return self.chunk_seeds.get(chunk, self.settings.seed)


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _stream(run: _Run, state: StreamState) -> Iterator[ChunkResult]:
    plan, hooks = run.plan, run.hooks
    clock = ProgressClock(state.next_chunk, plan.num_chunks, run.settings.sampled_steps)
    cache: dict[int, ChunkConditioning] = {}  # y and CLIP by reference index (reused while it repeats)
    try:
        for chunk in plan.chunks[state.next_chunk :]:
            result = _generate_chunk(run, chunk, state, clock, cache)
            state = result.state
            clock.chunk_done(chunk.index)
            yield result  # the consumer commits it before anything below can interrupt
            if hooks.on_chunk is not None:
                hooks.on_chunk(
                    ChunkProgress(chunk.index, plan.num_chunks, result.frames, clock.eta(chunk.index + 1, 0),
                                  result.pass_calls, result.skipped_calls, result.refine_calls)
                )
    finally:  # early stop, interrupt or error: drop device tensors now, not at garbage collection
        cache.clear()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()


def _reference_index(
    plan: StreamPlan, chunk: ChunkPlan, references: ReferenceFrames, s: StreamSettings
) -> int:
    return reference_frame_for_chunk(
        chunk,
        plan.chunk_frames,
        references.num_frames,
        references.fps,
        s.reference_strategy,
        s.reference_overflow,
    )


def _audio_windows(
    persons: list[torch.Tensor], plan: StreamPlan, chunk: ChunkPlan, padding: str, device
) -> torch.Tensor:
    """[P, F, 5, L, C] windows of the chunk's global frames (speakers stacked)."""
    windows = chunk_audio_windows(
        persons, chunk.start, chunk.num_frames, total_frames=plan.num_audio_frames, padding=padding
    )
    return windows.to(device=device, dtype=torch.float32)


def _colour_reference(plan, chunk, references, settings, reference, state) -> torch.Tensor:
    """[3, R, H, W] frames whose colour statistics the chunk is matched to (see settings.COLOR_REFERENCES).
    ``references``: the run's RecentFrames, so the first chunk's frame is served from memory every chunk."""
    if settings.color_reference == "chunk":
        return reference[:, None]
    if settings.color_reference == "previous_tail" and state.context_pixels is not None:
        return state.context_pixels.to(reference.device)
    first = _reference_index(plan, plan.chunks[0], references, settings)
    return references.frame(first).to(reference.device)[:, None]


def _generate_chunk(
    run: _Run, chunk: ChunkPlan, state: StreamState, clock: ProgressClock, cache: dict
) -> ChunkResult:
    plan, references, settings, device = run.plan, run.references, run.settings, run.device
    timings = {"vae": 0.0, "dit": 0.0, "colour": 0.0}  # vae: conditioning (encodes, CLIP, audio) + decode
    t0 = t_stage = _sync(device)
    run.hooks.stage("encoding_references", chunk.index, plan.num_chunks, clock.eta(chunk.index, 0))
    ref_index = _reference_index(plan, chunk, references, settings)
    dub = chunk_dub(run, chunk, ref_index)  # the source clip first: a video source reads forwards only
    t_dub = _sync(device)
    timings["dub"] = t_dub - t0  # source clip, its VAE encode, masks (then the composite, below)
    t0 = t_dub
    reference = run.source.frame(ref_index).to(device=device, dtype=torch.float32)
    # a new clip's chunk 0 has only its reference frame as context; every other chunk (a continued
    # clip's chunk 0 too) has the last M frames before it
    context_pixels = reference[:, None] if state.context_pixels is None else state.context_pixels.to(device)
    refine_calls, stages = 0, {}
    if settings.refine.applies_to(chunk.index):  # experimental: repair the context before it propagates
        run.hooks.stage("refining_context", chunk.index, plan.num_chunks, clock.eta(chunk.index, 0))
        t_refine = _sync(device)
        cached = cache.get(ref_index)
        context_pixels, refine_calls = _refine(run, chunk, state, reference, context_pixels, cached)
        stages["refining_context"] = _sync(device) - t_refine
    y, clip, context = _conditioning(run, cache, ref_index, reference, context_pixels)
    audio = _audio_windows(run.persons, plan, chunk, settings.audio_padding, device)
    positive, negative = run.text.for_chunk(chunk.index)
    t1 = _sync(device)
    timings["vae"] += t1 - t0
    stages["encoding_references"] = t1 - t_stage - stages.get("refining_context", 0.0)

    run.hooks.stage("sampling", chunk.index, plan.num_chunks, clock.eta(chunk.index, 0))
    clock.start_sampling()
    latents, calls, skipped = _sample_chunk(run, chunk, clock, (y, clip, audio, positive, negative), context,
                                            dub)
    t2 = _sync(device)
    timings["dit"] = t2 - t1
    check_finite(latents, chunk, plan.num_chunks, "latents")

    run.hooks.stage("decoding", chunk.index, plan.num_chunks, clock.eta(chunk.index, settings.sampled_steps))
    pixels = run.vae.decode(latents).float()
    check_finite(pixels, chunk, plan.num_chunks, "decoded frames")
    t3 = _sync(device)
    timings["vae"] += t3 - t2
    pixels, colour = _colour_correct(run, chunk, reference, state, pixels)
    t_dub = _sync(device)
    pixels = finish_dub(dub, pixels)  # the very last step: nothing touches the kept source again
    t4 = _sync(device)
    timings["colour"], timings["dub"] = t_dub - t3, timings["dub"] + t4 - t_dub

    check_finite(pixels, chunk, plan.num_chunks, "colour-corrected frames")
    # the next chunk's context: the last M frames of the whole chunk, after colour correction (float32)
    next_context = pixels[:, -plan.context_frames :].detach().to("cpu", torch.float32).clone()
    # the kept frames leave the device as uint8 only (a quarter of float32; no float copy on the host)
    kept = pixels[:, chunk.keep_start : chunk.keep_stop].detach()
    kept_uint8 = frames_to_uint8_on_device(kept).to("cpu")
    timings["post"] = _sync(device) - t4  # context tail + uint8 conversion + the copy to the host
    stages.update(sampling=timings["dit"], decoding=t3 - t2, colour=timings["colour"],
                  post=timings["post"] + t4 - t_dub)
    new_state = StreamState(chunk.index + 1, next_context)
    log.debug(
        "chunk %d/%d: %s", chunk.index + 1, plan.num_chunks, {k: round(v, 3) for k, v in timings.items()}
    )
    return ChunkResult(chunk, plan.num_chunks, kept_uint8, ref_index, new_state, timings, calls, skipped,
                       refine_calls, [kept], stages, colour)


def _colour_correct(run: _Run, chunk: ChunkPlan, reference: torch.Tensor, state: StreamState,
                    pixels: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
    """(the colour-matched chunk, what matching changed in its kept frames; None when colour is off)."""
    settings = run.settings
    if not settings.colour_enabled:
        return pixels, None
    target = _colour_reference(run.plan, chunk, run.source, settings, reference, state)
    matched = match_colors_signed(pixels, target.to(pixels.device), settings.color_method,
                                  settings.color_strength)
    return matched, colour_change(pixels, matched, chunk.keep_start, chunk.keep_stop)


def colour_change(before: torch.Tensor, after: torch.Tensor, start: int, stop: int) -> dict:
    """What colour matching did to frames [start:stop] of a [3, N, H, W] chunk in [-1, 1], in uint8
    levels (x 127.5): ``mean_abs`` (mean |after - before|) and ``mean_rgb`` (the signed mean shift per
    channel). Measured on every 4th pixel: a statistic for reports; the frames are not touched."""
    delta = (after[:, start:stop, ::4, ::4] - before[:, start:stop, ::4, ::4]).float() * 127.5
    rgb = delta.mean(dim=(1, 2, 3)).tolist()
    return {"mean_abs": round(float(delta.abs().mean()), 3), "mean_rgb": [round(v, 3) for v in rgb]}


def _conditioning(run: _Run, cache: dict, ref_index: int, reference: torch.Tensor, context_pixels: torch.Tensor):
    """(y, CLIP features, context latents); y and CLIP are reused while the reference frame repeats.
    SVI-Talk: y and CLIP come from the motion frames (the context pixels), every chunk; no context."""
    if run.settings.mode == "svi_talk":
        cond = build_svi_conditioning(run.vae, reference, context_pixels, run.plan.chunk_frames,
                                      run.image_encoder)
        return cond.y, cond.clip_features, None
    if ref_index in cache:
        cached = cache[ref_index]
        return cached.y, cached.clip_features, encode_context(run.vae, context_pixels)
    cond = build_conditioning(run.vae, reference, context_pixels, run.plan.chunk_frames, run.image_encoder)
    cache.clear()
    cache[ref_index] = cond
    return cond.y, cond.clip_features, cond.context_latents


def _refine(run: _Run, chunk: ChunkPlan, state: StreamState, reference: torch.Tensor,
            context_pixels: torch.Tensor, cached: ChunkConditioning | None) -> tuple[torch.Tensor, int]:
    """The chunk's context after refinement (colour-corrected like any context) and its DiT pass calls."""
    s = run.settings
    clip = cached.clip_features if cached is not None else encode_clip(run.image_encoder, reference)
    target = _colour_reference(run.plan, chunk, run.source, s, reference, state) if s.colour_enabled else None
    return refine_context_pixels(run, chunk, context_pixels, reference, clip, target)


def _sample_chunk(run: _Run, chunk: ChunkPlan, clock: ProgressClock, conditioning: tuple, context: torch.Tensor | None,
                  dub: ChunkDub | None = None) -> tuple[torch.Tensor, int, int]:
    """Denoise one chunk with the run's scheduler and a fresh step cache -> (latents, pass calls, skipped)."""
    settings, device, num_chunks = run.settings, run.device, run.plan.num_chunks
    y, clip, audio, positive, negative = conditioning
    step_cache = settings.step_cache.new_state(settings.sampled_steps)
    gate = None if dub is None or len(run.persons) > 1 else dub.audio_gate
    model_fn = make_model_fn(run.model, y.to(device), None if clip is None else clip.to(device), audio,
                             positive.to(device), negative.to(device), run.masks, run.batching,
                             step_cache if isinstance(step_cache, TeaCache) else None, gate)
    if isinstance(step_cache, EasyCache):
        model_fn = step_cache.wrap(model_fn)
    model_fn, calls = counting(model_fn)
    shape = (16, latent_frames_for(run.plan.chunk_frames), *y.shape[-2:])
    seed, extra = run.seed_for(chunk.index), {}
    if settings.scheduler == "distill":  # fresh noise per step, from (seed, chunk, step): resumable
        extra["step_noise"] = lambda i: step_noise(shape, seed, chunk.index, i, device)
    noise = chunk_noise(shape, seed, chunk.index, device)
    start = noise
    if dub is not None:
        start, extra["pin"] = _dub_start(dub, noise, run.timesteps, settings.denoise)
    latents = scheduler_sampler(settings.scheduler)(
        model_fn, start, run.timesteps, None if context is None else context.to(device),
        settings.guidance, _step_callback(run.hooks, clock, chunk.index, num_chunks), **extra)
    skipped = 0 if step_cache is None else step_cache.skipped
    if step_cache is not None:
        log.info("chunk %d/%d: step cache skipped %d of %d DiT pass calls", chunk.index + 1, num_chunks,
                 skipped, calls[0])
    return latents, calls[0], skipped



def _dub_start(dub: ChunkDub, noise: torch.Tensor, timesteps: torch.Tensor, denoise: float):
    """(the chunk's starting latent, the sampler's pin or None) for a dub (see dub.py)."""
    start = noise
    if denoise < 1.0:  # the source's own motion, noised to the first step that runs
        start = noised_source(dub.source_latents, noise, timesteps[:1].to(noise.device) / NUM_TRAIN_TIMESTEPS)
    return start, dub.pin(noise)


def check_finite(values: torch.Tensor, chunk: ChunkPlan, num_chunks: int, what: str) -> None:
    """Refuse a chunk holding NaN/inf (it would be a black or garbage video marked as finished)."""
    if bool(torch.isfinite(values).all()):
        return
    bad = int((~torch.isfinite(values)).sum())
    raise NonFiniteError(
        f"Chunk {chunk.index + 1}/{num_chunks} produced NaN or infinite {what} ({bad} values); it was not "
        "saved. Likely causes: damaged model weights, a bad LoRA, or fp16 overflow.",
        "Check the model files with python -m infinitetalk_core.doctor (download a damaged one again), "
        "set each LoRA's strength to 0 to find a bad one, and use weight_dtype bf16 instead of fp16. "
        "Finished chunks are kept.",
    )


def _step_callback(hooks: StreamHooks, clock: ProgressClock, chunk: int, num_chunks: int):
    def callback(info: dict) -> None:
        step = info["step"] + 1
        clock.step_done()
        if hooks.on_step is not None:
            hooks.on_step(
                StepProgress(
                    chunk,
                    num_chunks,
                    step,
                    info["total"],
                    clock.fraction(chunk, step),
                    clock.eta(chunk, step),
                    info["denoised"],
                )
            )
        if hooks.check_interrupt is not None and step < info["total"] and hooks.check_interrupt():
            raise GenerationInterrupted(
                f"Stopped at chunk {chunk + 1}/{num_chunks}, step {step}.",
                "Run again with the same inputs to resume after the last finished chunk.",
            )

    return callback


__all__ = ["ChunkResult", "StreamState", "check_finite", "generate_chunks"]
