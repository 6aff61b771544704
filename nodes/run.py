"""The Streaming Sampler's body: unpack ComfyUI values, open the job folder, run the core generator.

ComfyUI -> core translation happens here and only here (CONDITIONING -> TextContexts, VAE ->
WanNormalizedVAE, CLIP_VISION -> ImageEncoder); the generation itself is ``generate_chunks``; finished
chunks go straight into the job folder, so an interrupt or crash keeps them (re-queue to resume).
"""
from __future__ import annotations

import logging
import shutil
from fractions import Fraction

import torch

from ..infinitetalk_core.stream import bucket_for, default_shift, plan_chunks, speaker_masks
from ..infinitetalk_core.stream.generate import generate_chunks
from ..infinitetalk_core.stream.guidance import GuidanceConfig
from ..infinitetalk_core.stream.hooks import StreamHooks
from ..infinitetalk_core.stream.host import TextContexts, WanNormalizedVAE, tensor_digest
from ..infinitetalk_core.stream.job import JobFingerprint, digest_json
from ..infinitetalk_core.stream.render import commit_chunks, open_job
from ..infinitetalk_core.stream.settings import StreamSettings
from .common import first_image_to_pil, require
from .frames import JobFrames
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
    settings = StreamSettings(
        steps=inputs["steps"], shift=inputs["shift"] or default_shift(family), guidance=guidance,
        seed=inputs["seed"], color_method=inputs["color_method"], color_strength=inputs["color_strength"],
        color_reference=inputs["color_reference"], reference_strategy=refs.strategy,
        reference_overflow=refs.overflow)
    settings.validate()
    return settings


def _fingerprint(model, vae, text, source, feats, encoder, settings, plan, size) -> JobFingerprint:
    probe = torch.linspace(-1, 1, 3 * 16 * 16).reshape(3, 1, 16, 16)  # cheap VAE identity
    inputs = {
        "model": digest_json([model.files, model.loras, str(model.config)]),
        "vae": tensor_digest(vae.encode(probe)),
        "reference": source.fingerprint(),
        "audio": digest_json([tensor_digest(f) for f in feats.features] + [feats.boxes]),
        "text": text.fingerprint(),
        "clip": "none" if encoder is None else tensor_digest(encoder.encode_image(source.frame(0))),
        "parameters": digest_json([settings.to_json(), plan.chunk_frames, plan.context_frames,
                                   plan.output_frames, list(size)]),
    }
    return JobFingerprint(inputs)


def job_path(root, name: str, fingerprint: JobFingerprint, resume: bool):
    """``root/<job_name>`` or ``root/<fingerprint>``; emptied first when the user turned resume off."""
    path = root / (name.strip() or fingerprint.digest[:16])
    if not resume and path.exists():
        shutil.rmtree(path)  # the user asked to start over
    return path


def _hooks(host, progress, steps: int, node_id) -> StreamHooks:
    def on_step(p):
        progress.update(p.chunk * steps + p.step)
        host.send_progress({"chunk": p.chunk, "chunks": p.num_chunks, "step": p.step, "steps": p.steps,
                            "fraction": p.fraction, "eta": p.eta_seconds}, node_id)

    def on_chunk(c):
        frames = ((c.frames[:, -1:].float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)
        progress.update((c.chunk + 1) * steps, first_image_to_pil(frames))
        host.send_progress({"chunk": c.chunk + 1, "chunks": c.num_chunks, "step": 0, "steps": steps,
                            "fraction": (c.chunk + 1) / c.num_chunks, "eta": c.eta_seconds, "chunk_done": True},
                           node_id)

    def check_interrupt():
        host.check_interrupt()  # ComfyUI raises its own (BaseException) interrupt here
        return False

    return StreamHooks(on_step, on_chunk, check_interrupt)


def run_stream(inputs: dict) -> tuple:
    """Everything the Streaming Sampler does; returns (frames handle, IMAGE, frame count, fps)."""
    host, model, refs, feats = get_host(), inputs["model"], inputs["references"], inputs["audio_features"]
    size, family = target_size(inputs, refs)
    settings = _settings(inputs, refs, family)
    plan = plan_chunks(feats.num_frames, inputs["chunk_frames"], inputs["context_frames"],
                       inputs.get("max_frames") or None)
    vae, text = WanNormalizedVAE(inputs["vae"]), text_contexts(inputs["positive"], inputs["negative"])
    encoder = ClipVisionEncoder(inputs["clip_vision"])
    masks = None if feats.num_speakers == 1 else speaker_masks(refs.height, refs.width, *size, 2, feats.boxes)
    source = refs.open(size)
    try:
        fingerprint = _fingerprint(model, vae, text, source, feats, encoder, settings, plan, size)
        path = job_path(host.output_dir() / JOBS_FOLDER, inputs.get("job_name", ""), fingerprint,
                        inputs["resume"])
        job, state = open_job(path, None, fingerprint, plan, size)
        if not job.is_complete:
            device = host.load_for_use([model.managed])
            progress = host.progress(plan.num_chunks * settings.steps)
            progress.update(job.chunks_done * settings.steps)
            chunks = generate_chunks(model.managed.module, vae, plan, source, feats.features, text, settings,
                                     image_encoder=encoder, ref_target_masks=masks, state=state,
                                     hooks=_hooks(host, progress, settings.steps, inputs.get("unique_id")),
                                     device=device)
            commit_chunks(job, chunks)
            progress.close()
    finally:
        source.close()
    frames = JobFrames(job, Fraction(25))
    images = frames.last_frames(max(1, inputs.get("image_frames", 1)))
    return (frames, images, frames.frame_count, 25.0)
