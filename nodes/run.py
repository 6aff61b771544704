"""The Streaming Sampler's body: unpack ComfyUI values, open the job folder, run the core generator.

ComfyUI -> core translation happens here and only here (CONDITIONING -> TextContexts, VAE ->
WanNormalizedVAE, CLIP_VISION -> ImageEncoder); the generation itself is ``generate_chunks``; finished
chunks go straight into the job folder, so an interrupt or crash keeps them (re-queue to resume).
"""
from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction

import torch

from ..infinitetalk_core.stream import bucket_for, default_shift, plan_chunks, speaker_masks
from ..infinitetalk_core.stream.generate import generate_chunks
from ..infinitetalk_core.sampling.guidance import GuidanceConfig
from ..infinitetalk_core.sampling.refine import RefineSettings
from ..infinitetalk_core.sampling.schedulers import DISTILL_SHIFT
from ..infinitetalk_core.sampling.step_cache import StepCacheSettings
from ..infinitetalk_core.stream.hooks import StageTimer, StreamHooks
from ..infinitetalk_core.stream.host import TextContexts, WanNormalizedVAE, pixels_from_comfy, tensor_digest
from ..infinitetalk_core.stream.job import JobFingerprint, digest_json
from ..infinitetalk_core.stream.job_files import disk_errors, job_folder, remove_job_folder, safe_job_name
from ..infinitetalk_core.stream.dub_mask import DubMask
from ..infinitetalk_core.stream.render import BackgroundCommitter, open_job, run_job
from ..infinitetalk_core.stream.reroll import apply_reroll
from ..infinitetalk_core.stream.sources import resize_crop_pixels
from ..infinitetalk_core.stream.settings import SVI_MOTION_FRAMES, SVI_SHIFT, StreamSettings
from ..infinitetalk_core.stream.validation import validate_stream_inputs
from ..infinitetalk_core.errors import InputValidationError
from .common import first_image_to_pil, require
from .sampler_checks import check_sampler_settings, speaker_weights_warning, svi_weights_warning
from .deferred_interrupt import DeferredInterrupt, FinishingVAE
from .chapter_inputs import chapter_job_name, chapter_layout, chapter_plan, chapters_to_render, job_chapters
from .frames import ChapterFrames, JobFrames
from .host import get_host

log = logging.getLogger(__name__)
JOBS_FOLDER = "InfiniteTalk_jobs"


def conditioning_tokens(entry_tensor: torch.Tensor) -> torch.Tensor:
    """CONDITIONING tensor [1, L, D] -> [L', D] without the zero rows umt5 pads to 512 (kept >= 1)."""
    tokens = entry_tensor[0] if entry_tensor.ndim == 3 else entry_tensor
    nonzero = torch.nonzero(tokens.abs().sum(-1) > 0).flatten()
    return tokens[: int(nonzero[-1]) + 1 if len(nonzero) else 1].float().cpu()


def text_contexts(positive: list, negative: list) -> TextContexts:
    """CONDITIONING lists -> per-chunk (positive, negative) pairs; entry i serves chunk i, the last repeats."""
    require(bool(positive) and bool(negative), "A CONDITIONING input is empty.",
            "Connect CLIPTextEncode outputs to positive and negative.")
    pos = [conditioning_tokens(c[0]) for c in positive]
    neg = [conditioning_tokens(c[0]) for c in negative]
    count = max(len(pos), len(neg))
    return TextContexts(tuple((pos[min(i, len(pos) - 1)], neg[min(i, len(neg) - 1)]) for i in range(count)))


class ClipVisionEncoder:
    """ComfyUI CLIP_VISION -> the core's ImageEncoder: penultimate tokens of the squashed 224 image
    (``crop=False``: the reference resizes the whole frame to 224x224 without cropping)."""

    def __init__(self, clip_vision):
        self.clip_vision = clip_vision

    def encode_image(self, frame: torch.Tensor) -> torch.Tensor:
        image = ((frame.float() + 1) / 2).clamp(0, 1).permute(1, 2, 0)[None]  # [1, H, W, 3]
        return self.clip_vision.encode_image(image, crop=False)["penultimate_hidden_states"]


def target_size(inputs: dict, refs) -> tuple[tuple[int, int], str]:
    """((height, width), bucket family) from the size mode."""
    if inputs["size"] == "custom":
        h, w = int(inputs["height"]), int(inputs["width"])
        return (h, w), "720" if h * w > 800 * 800 else "480"
    family = inputs["size"].split("_")[1]
    return bucket_for(refs.height, refs.width, family), family


def _settings(inputs: dict, refs, family: str) -> StreamSettings:
    guidance = GuidanceConfig(inputs["text_guidance"], inputs["audio_guidance"], inputs.get("use_apg", False),
                              inputs.get("apg_momentum", -0.75), inputs.get("apg_norm_threshold", 55.0))
    scheduler, mode = inputs.get("scheduler") or "flow_euler", inputs.get("mode") or "infinitetalk"
    auto_shift = DISTILL_SHIFT if scheduler == "distill" else SVI_SHIFT if mode == "svi_talk" else \
        default_shift(family)
    cache = StepCacheSettings(inputs.get("step_cache") or "none", inputs.get("cache_threshold") or 0.0,
                              inputs.get("cache_start_step") or 0, inputs.get("cache_end_step") or 0, family)
    settings = StreamSettings(
        steps=inputs["steps"], shift=inputs["shift"] or auto_shift, guidance=guidance,
        seed=inputs["seed"], color_method=inputs["color_method"], color_strength=inputs["color_strength"],
        color_reference=inputs["color_reference"], reference_strategy=refs.strategy,
        reference_overflow=refs.overflow, step_cache=cache, scheduler=scheduler,
        refine=RefineSettings(inputs.get("refine_every") or 0, inputs.get("refine_strength", 0.3),
                              inputs.get("refine_steps", 4)),
        denoise=1.0 if inputs.get("denoise") is None else float(inputs["denoise"]), mode=mode)
    settings.validate()
    return settings


MASK_ASPECT_TOLERANCE = 0.01


def dub_mask_from_comfy(mask, refs, size: tuple[int, int], feather: int) -> DubMask | None:
    """ComfyUI MASK drawn on the source frames (at their size, or any size of their aspect ratio) or
    already at the output size -> DubMask at ``size``, cropped exactly as the frames are."""
    if mask is None:
        return None
    drawn = tuple(mask.shape[-2:])
    if drawn == tuple(size):
        return DubMask(mask.reshape(-1, *drawn), feather)
    aspect, source_aspect = drawn[1] / drawn[0], refs.width / refs.height
    if abs(aspect - source_aspect) > MASK_ASPECT_TOLERANCE * source_aspect:
        raise InputValidationError(
            f"dub_mask is {drawn[1]}x{drawn[0]} but the source is {refs.width}x{refs.height}: a different "
            "shape, so it would cover the wrong places.",
            f"Make the mask at the source video's size ({refs.width}x{refs.height}, e.g. Solid Mask's width "
            "and height) or at any size of the same aspect ratio.")
    return DubMask.from_source_masks(mask, size, feather)


def previous_from_comfy(images, size: tuple[int, int], frames: int) -> torch.Tensor | None:
    """The last ``frames`` of the IMAGE clip to continue -> [3, n, H, W] in [-1, 1] at ``size`` (cover-
    resize, centre crop); only those are used, so a long clip is never copied whole."""
    if images is None:
        return None
    pixels = pixels_from_comfy(images.reshape(-1, *images.shape[-3:])[-frames:])
    return torch.stack([resize_crop_pixels(pixels[:, i], *size) for i in range(pixels.shape[1])], 1)


def _fingerprint(model, vae, text, source, feats, encoder, settings, plan, size, dub_mask=None,
                 previous=None) -> JobFingerprint:
    probe = torch.linspace(-1, 1, 3 * 16 * 16).reshape(3, 1, 16, 16)  # cheap VAE identity
    inputs = {
        "model": digest_json([model.files, model.loras, str(model.config)]),
        "vae": tensor_digest(vae.encode(probe)),
        "reference": source.fingerprint(),
        "audio": digest_json(_feature_digests(feats) + [feats.boxes]),
        "text": text.fingerprint(),
        "clip": "none" if encoder is None else tensor_digest(encoder.encode_image(source.frame(0))),
        # the audio's length, not the cap: a later pass with another max_frames continues the same job
        "parameters": digest_json([settings.to_json(), plan.chunk_frames, plan.context_frames,
                                   plan.num_audio_frames, list(size)]),
    }
    if plan.first_frame:  # a chapter after the first (the first one is the start of the whole job)
        inputs["first_frame"] = str(plan.first_frame)
    if dub_mask is not None:  # only when given: job folders of runs without them keep their names
        inputs["dub_mask"] = dub_mask.fingerprint()
    if previous is not None:
        inputs["previous_frames"] = tensor_digest(previous)
    return JobFingerprint(inputs)


def _feature_digests(feats) -> list[str]:
    """Per-speaker feature digests: Audio Encode already hashed them (hours of features take seconds)."""
    digests = feats.fingerprint.split("|") if feats.fingerprint else []
    return digests if len(digests) == len(feats.features) else [tensor_digest(f) for f in feats.features]


def _hooks(host, progress, steps: int, node_id, deferred: DeferredInterrupt,
           committer: BackgroundCommitter) -> StreamHooks:
    """The generator's hooks; also makes ``committer`` report each chunk once it is on disk.

    A chunk is written on a background thread while the next one samples (render.BackgroundCommitter), so
    "chunk done" (progress, preview, the chunk_done message and a held interrupt) is reported once the
    chunk is committed: at the next denoising step (``committer.poll`` runs before each interrupt check)
    or, at the latest, when the next chunk starts decoding (the commit is waited for there, so chunk k is
    on disk before chunk k+1's decode begins, as before) or at the end. The generator's own on_chunk is
    not used: it fires when the chunk is handed to the writer, before it is on disk.
    """
    done, eta = [0], [None]  # the progress bar never moves back; the newest estimate of the time left
    holding, timer, last = [False], StageTimer(), [None]  # last: the closed stage's seconds

    def update(value: int, preview=None) -> None:
        done[0] = max(done[0], value)
        progress.update(done[0], preview)

    def send(stage: str, chunk: int, chunks: int, step: int, eta_seconds, **extra) -> None:
        fraction = (chunk * steps + step) / max(1, chunks * steps)
        if not extra.get("chunk_done"):  # a chunk saved in the background is no stage of its own
            closed = timer.enter(stage)
            last[0] = last[0] if closed is None else round(closed, 3)
        host.send_progress({"stage": stage, "chunk": chunk, "chunks": chunks, "step": step, "steps": steps,
                            "fraction": fraction, "eta": eta_seconds, "stage_seconds": last[0],
                            "timings": timer.timings(), **extra}, node_id)

    def on_stage(s):
        eta[0] = s.eta_seconds
        if s.stage == "decoding":  # the previous chunk's commit ends before this decode starts
            # an interrupt held since this chunk's last step waits until this chunk is committed; one that
            # arrives while the previous chunk is reported stops the run now (as right after that chunk)
            holding[0] = deferred.pending is not None
            try:
                committer.finish()
            finally:
                holding[0] = False
        deferred.guard(send, s.stage, s.chunk, s.num_chunks, steps if s.stage == "decoding" else 0,
                       s.eta_seconds)

    def on_step(p):
        eta[0] = p.eta_seconds
        deferred.guard(update, p.chunk * steps + p.step)
        deferred.guard(send, "sampling", p.chunk, p.num_chunks, p.step, p.eta_seconds)

    def chunk_saved(result, _io_seconds):  # the chunk is committed: a held interrupt may stop the run now
        frames = result.pixels_uint8[-1:].float().div(255)  # [1, H, W, 3]: the chunk's last frame
        deferred.guard(update, (result.index + 1) * steps, first_image_to_pil(frames))
        deferred.guard(send, "sampling", result.index + 1, result.num_chunks, 0, eta[0], chunk_done=True,
                       dit_calls=result.pass_calls, skipped_calls=result.skipped_calls,
                       refine_calls=result.refine_calls)
        if not holding[0]:
            deferred.raise_pending()

    def check_interrupt():
        committer.poll()  # report a chunk whose commit finished meanwhile (raises a writer error)
        deferred.raise_pending()
        host.check_interrupt()  # ComfyUI raises its own (BaseException) interrupt here
        return False

    committer.on_chunk_saved = chunk_saved
    return StreamHooks(on_step, None, check_interrupt, on_stage)


DIT_STAGES = ("refining_context", "sampling")


def _reload_before_dit(hooks: StreamHooks, reload) -> StreamHooks:
    """Load the DiT again before every stage that runs it: in low VRAM, ComfyUI may offload it to make
    room for a VAE encode or decode, and nothing else would load it back (ComfyUI's call is cheap when
    the model is already loaded)."""
    inner = hooks.on_stage

    def on_stage(s) -> None:
        if s.stage in DIT_STAGES:
            reload()
        if inner is not None:
            inner(s)

    return dataclasses.replace(hooks, on_stage=on_stage)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """A Streaming Sampler run's checked inputs, in the core's terms."""

    name: str
    model: object
    refs: object
    feats: object
    size: tuple[int, int]
    settings: StreamSettings
    plan: object
    text: TextContexts
    masks: torch.Tensor | None  # two speakers' routing masks
    dub_mask: DubMask | None
    previous: torch.Tensor | None  # the clip to continue, at the output size
    chapters: list = dataclasses.field(default_factory=list)  # every chapter of the job (core Chapter)
    parts: list = dataclasses.field(default_factory=list)  # the chapters this queue renders, in order


def _prepare(inputs: dict, host, node_id) -> _Prepared:
    """Everything checked before the job folder is touched: settings, sizes, plan, conditioning inputs."""
    check_sampler_settings(inputs)
    name = safe_job_name(inputs.get("job_name") or "")
    model, refs, feats = inputs["model"], inputs["references"], inputs["audio_features"]
    size, family = target_size(inputs, refs)
    settings = _settings(inputs, refs, family)
    context = SVI_MOTION_FRAMES if settings.mode == "svi_talk" else inputs["context_frames"]
    previous = previous_from_comfy(inputs.get("previous_frames"), size, context)
    plan = plan_chunks(feats.num_frames, inputs["chunk_frames"], context, inputs.get("max_frames") or None,
                       lead_context=previous is not None)
    if feats.boxes is not None and feats.mask_size not in (None, (refs.height, refs.width)):
        raise InputValidationError(
            f"The speaker masks are {feats.mask_size[1]}x{feats.mask_size[0]} but the reference is "
            f"{refs.width}x{refs.height}, so their boxes would land on the wrong places.",
            "Paint mask_1 and mask_2 on the reference image itself (same size), e.g. with the mask editor "
            "of its LoadImage.")
    warning = speaker_weights_warning(model.files, feats.num_speakers) or svi_weights_warning(model.files,
                                                                                               settings.mode)
    if warning:
        log.warning(warning)
        host.send_progress({"stage": "preparing", "chunk": 0, "chunks": plan.num_chunks, "warning": warning},
                           node_id)
    text = text_contexts(inputs["positive"], inputs["negative"])
    masks = None if feats.num_speakers == 1 else speaker_masks(refs.height, refs.width, *size, 2, feats.boxes)
    dub_mask = dub_mask_from_comfy(inputs.get("dub_mask"), refs, size, inputs.get("mask_feather", 8))
    chapters = job_chapters(inputs, feats, refs)
    parts = chapters_to_render(chapters, inputs.get("chapter") or 0, plan.max_frames)
    require(len(chapters) == 1 or previous is None, "previous_frames continues one clip, but chapters cut "
            f"this job into {len(chapters)} independent parts.", "Clear chapters, or disconnect previous_frames.")
    require(len(parts) == 1 or not inputs.get("regenerate_from_chunk"), "regenerate_from_chunk needs one "
            f"chapter, but {len(parts)} are rendered.", "Set chapter to the chapter to re-roll (from 1).")
    return _Prepared(name, model, refs, feats, size, settings, plan, text, masks, dub_mask, previous,
                     chapters, parts)


def _open_render_job(host, inputs, name, fingerprint, plan, size, settings, chapter_layout=None):
    root = host.output_dir() / JOBS_FOLDER
    with disk_errors("creating the jobs folder"):
        root.mkdir(parents=True, exist_ok=True)
    path = job_folder(root, name, fingerprint.digest)
    if not inputs["resume"]:
        remove_job_folder(path)  # the user asked to start over; only ever a job folder of ours
    job, state = open_job(path, None, fingerprint, plan, size,
                          {**settings.cost_metadata(plan.num_chunks), **(chapter_layout or {})})
    # a resumed chapter reports this pass's boundaries; the whole job (one chapter) reports none
    job.update_layout(chapter_layout or {"chapter": None, "chapters": None})
    return job, state


def _reroll(job, inputs: dict, plan) -> None:
    """Apply the node's re-roll request (chunk numbers from 1, as in the progress) to the job folder."""
    chunk = inputs.get("regenerate_from_chunk") or 0
    if chunk and job.chunks_done == 0:  # a new job (other inputs, or resume off): nothing to re-roll yet
        log.warning("regenerate_from_chunk=%d ignored: this job has no finished chunks yet (set it back to 0)",
                    chunk)
        return
    if chunk:
        require(chunk <= plan.num_chunks, f"regenerate_from_chunk={chunk}, but this video has "
                f"{plan.num_chunks} chunks.", f"Use 1..{plan.num_chunks}, or 0 to turn re-rolling off.")
        if apply_reroll(job, chunk - 1, int(inputs.get("reroll_seed") or 0), plan.context_frames):
            log.info("re-rolling chunk %d with seed %s", chunk, inputs.get("reroll_seed"))


def run_stream(inputs: dict) -> tuple:
    """Everything the Streaming Sampler does; returns (frames handle, IMAGE, frame count, fps)."""
    host, node_id = get_host(), inputs.get("unique_id")
    host.send_progress({"stage": "preparing", "chunk": 0, "chunks": 0}, node_id)
    p = _prepare(inputs, host, node_id)
    plan, settings = p.plan, p.settings
    deferred = DeferredInterrupt(host)
    vae, encoder = FinishingVAE(WanNormalizedVAE(inputs["vae"]), deferred), ClipVisionEncoder(inputs["clip_vision"])
    source = p.refs.open(p.size)
    try:
        jobs = [_run_chapter(host, inputs, p, chapter, vae, source, encoder, deferred) for chapter in p.parts]
    finally:
        source.close()
    host.send_progress({"stage": "done", "chunk": plan.num_chunks, "chunks": plan.num_chunks, "step": 0,
                        "steps": settings.sampled_steps, "fraction": 1.0, "eta": 0.0}, node_id)
    producer = None if node_id is None else str(node_id)
    parts = [JobFrames(job, Fraction(25), producer) for job in jobs]
    frames = parts[0] if len(parts) == 1 else ChapterFrames(parts)
    images = frames.last_frames(max(1, inputs.get("image_frames", 1)))
    return (frames, images, frames.frame_count, 25.0)


def _run_chapter(host, inputs: dict, p: _Prepared, chapter, vae, source, encoder, deferred):
    """Render one chapter (the whole job when it has one) into its job folder; returns the closed job."""
    node_id, plan = inputs.get("unique_id"), chapter_plan(p, chapter)
    p = dataclasses.replace(p, plan=plan)
    validate_stream_inputs(p.model.managed.module, plan, source, p.feats.features, p.text, p.settings, encoder,
                           p.masks, None, dub_mask=p.dub_mask, previous_frames=p.previous)
    where = {} if len(p.chapters) == 1 else {"chapter": chapter.index + 1, "chapters": len(p.chapters)}
    host.send_progress({"stage": "encoding_references", "chunk": 0, "chunks": plan.num_chunks, **where}, node_id)
    fingerprint = _fingerprint(p.model, vae, p.text, source, p.feats, encoder, p.settings, plan, p.size,
                               p.dub_mask, p.previous)
    job, _ = _open_render_job(host, inputs, chapter_job_name(p, chapter), fingerprint, plan, p.size,
                              p.settings, chapter_layout(p, chapter))
    try:
        _reroll(job, inputs, plan)
        if not job.is_complete:
            _render(host, job, p, vae, source, encoder, node_id, deferred,
                    live_preview=inputs.get("live_preview", True))  # live preview: see _render
    finally:
        job.close()
    return job


def _render(host, job, p: _Prepared, vae, source, encoder, node_id, deferred, live_preview: bool = True):
    steps, model = p.settings.sampled_steps, p.model
    device = host.load_for_use([model.managed])
    progress = host.progress(p.plan.num_chunks * steps)
    progress.update(job.chunks_done * steps)
    live = _live_output(host, job, p, node_id) if live_preview else None
    committer = BackgroundCommitter(job, live=live)
    hooks = _reload_before_dit(_hooks(host, progress, steps, node_id, deferred, committer),
                               lambda: host.load_for_use([model.managed]))

    def chunks_from(state):
        return generate_chunks(model.managed.module, vae, p.plan, source, p.feats.features, p.text, p.settings,
                               image_encoder=encoder, ref_target_masks=p.masks, state=state, hooks=hooks,
                               device=device, dub_mask=p.dub_mask, chunk_seeds=dict(job.manifest.rerolls),
                               previous_frames=p.previous)

    run_job(job, chunks_from, committer=committer)
    if live is not None:
        live.sync(job)
    deferred.raise_pending()
    progress.close()


def _live_output(host, job, p: _Prepared, node_id):
    """The job's HLS preview (video/live.py), synced now, and a progress event with its /view URL."""
    from urllib.parse import quote

    from ..infinitetalk_core.video.live import LiveOutput

    mix = getattr(p.feats, "mix", None) or {}
    audio = (mix["waveform"], int(mix["sample_rate"])) if "waveform" in mix else None
    live = LiveOutput(job.path, audio, getattr(p.plan, "first_frame", 0))
    live.sync(job)
    try:  # only ever a folder inside the output folder (ComfyUI's /view serves nothing else)
        sub = live.folder.resolve().relative_to(host.output_dir().resolve()).as_posix()
    except ValueError:
        log.warning("live preview not shown: the job folder is outside the output folder")
        return live
    view = "/view?filename={}&subfolder=" + quote(sub, safe="") + "&type=output"
    host.send_progress({"stage": "sampling", "chunk": job.chunks_done, "chunks": p.plan.num_chunks,
                        "step": 0, "live_url": view.format("index.m3u8"),
                        "latest_url": view.format("latest.m4v")}, node_id)
    return live
