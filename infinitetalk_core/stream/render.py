"""Run a stream into a job directory (resumable, bounded memory), then encode the final mp4.

    job = render_to_job(job_dir, model, vae, plan, references, features, text, settings, ...)
    job.write_mp4("out.mp4", audio="speech.wav")       # or render_video(...) for both steps

Each chunk's kept frames are written (uint8) as soon as they are decoded; host RAM holds one chunk
whatever the video length. Rerunning with the same inputs resumes after the last finished chunk;
see job.py for what "same inputs" means and what happens otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..errors import GenerationError, JobDamagedError
from .generate import ChunkResult, StreamState, generate_chunks
from .hooks import StreamHooks
from .host import ImageEncoder, TextContexts, VideoVAE, tensor_digest
from .job import JobDirectory, JobFingerprint, digest_json
from .plan import FPS, StreamPlan
from .settings import StreamSettings
from .sources import ReferenceFrames
from .validation import audio_persons, validate_stream_inputs

log = logging.getLogger(__name__)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (use a file identity instead for 14B models: this reads
    every weight)."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_digest(t).encode())
    return digest.hexdigest()


def _identity(component, default: str) -> str:
    return str(getattr(component, "identity", None) or default)


def fingerprint_inputs(
    model,
    vae,
    plan: StreamPlan,
    references: ReferenceFrames,
    audio_features,
    text: TextContexts,
    settings: StreamSettings,
    image_encoder=None,
    ref_target_masks: torch.Tensor | None = None,
    model_identity: str | None = None,
) -> JobFingerprint:
    """Hash of every input group: what decides whether a job directory may be resumed."""
    config = getattr(model, "config", None)
    audio = hashlib.sha256(
        "".join(tensor_digest(p) for p in audio_persons(audio_features)).encode()
    ).hexdigest()
    return JobFingerprint(
        {
            "reference": references.fingerprint(),
            "audio": audio,
            "text": text.fingerprint(),
            "model": digest_json(
                {"identity": model_identity or model_fingerprint(model), "config": repr(config)}
            ),
            "vae": digest_json(_identity(vae, type(vae).__name__)),
            "image_encoder": digest_json(_identity(image_encoder, type(image_encoder).__name__)),
            "masks": "none" if ref_target_masks is None else tensor_digest(ref_target_masks),
            "plan": digest_json({k: v for k, v in vars(plan).items() if k != "chunks"}),
            "parameters": digest_json(settings.to_json()),
        }
    )


def render_to_job(
    job_path: str | Path | None,
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
    hooks: StreamHooks | None = None,
    model_identity: str | None = None,
    job_root: str | Path | None = None,
    device: torch.device | str | None = None,
    on_chunk_saved: Callable[[ChunkResult, float], None] | None = None,
) -> JobDirectory:
    """Generate every chunk not yet in the job directory; return the (complete) job.

    job_path: the job directory (refused if it holds another input set), or None to use
    ``job_root/<fingerprint>`` (resumes the same inputs, starts fresh for others). model_identity: a
    stable id of the weights (e.g. file hashes + LoRAs); default: hash of the model's state dict.
    on_chunk_saved(result, io_seconds) runs after each chunk is on disk.
    """
    validate_stream_inputs(
        model, plan, references, audio_features, text, settings, image_encoder, ref_target_masks, None
    )
    fingerprint = fingerprint_inputs(
        model,
        vae,
        plan,
        references,
        audio_features,
        text,
        settings,
        image_encoder,
        ref_target_masks,
        model_identity,
    )
    job, _ = open_job(job_path, job_root, fingerprint, plan, references.size,
                      settings.cost_metadata(plan.num_chunks))
    try:
        if job.is_complete:
            log.info("job %s is already complete (%d chunks)", job.path, job.chunks_done)
            return job

        def chunks_from(state: StreamState | None):
            return generate_chunks(model, vae, plan, references, audio_features, text, settings,
                                   image_encoder=image_encoder, ref_target_masks=ref_target_masks, state=state,
                                   hooks=hooks, device=device)

        return run_job(job, chunks_from, on_chunk_saved)
    finally:
        job.close()


def job_state(job: JobDirectory) -> StreamState | None:
    """The state to continue ``job`` from (None: start at chunk 0), checked against its chunk count."""
    saved = job.load_state()
    state = StreamState.from_tensors(saved) if saved is not None else None
    if state is not None and state.next_chunk != job.chunks_done:
        raise JobDamagedError(
            f"Job folder '{job.path.name}' has a state for chunk {state.next_chunk} but {job.chunks_done} "
            "chunks done.",
            "Move that job folder away (or delete it) to start over.",
        )
    return state


def run_job(
    job: JobDirectory,
    chunks_from: Callable[[StreamState | None], Iterable[ChunkResult]],
    on_chunk_saved: Callable[[ChunkResult, float], None] | None = None,
) -> JobDirectory:
    """Generate and commit every missing chunk; after a repair jumps ahead, continue from there."""
    while not job.is_complete:
        job.fast_forwarded = False
        commit_chunks(job, chunks_from(job_state(job)), on_chunk_saved)
        if not job.fast_forwarded:
            break
    return job


def commit_chunks(
    job: JobDirectory,
    chunks: Iterable[ChunkResult],
    on_chunk_saved: Callable[[ChunkResult, float], None] | None = None,
) -> JobDirectory:
    """Write each chunk's kept frames and resume state to ``job`` as soon as it is generated.

    Stops early (closing the generator) when a repair fast-forwarded the job past the chunks it
    would generate next.
    """
    for result in chunks:
        start = time.perf_counter()
        job.commit_chunk(result.index, result.frames_uint8(), result.state.to_tensors())
        if on_chunk_saved is not None:
            on_chunk_saved(result, time.perf_counter() - start)
        if job.fast_forwarded:
            getattr(chunks, "close", lambda: None)()
            break
    return job


def render_video(out_path: str | Path, audio, *args, crf: int = 19, **kwargs) -> Path:
    """``render_to_job(*args, **kwargs)`` then encode ``out_path`` with the original ``audio``
    (file path or (waveform, sample_rate)), exactly output_frames / 25 s long."""
    return render_to_job(*args, **kwargs).write_mp4(out_path, audio=audio, crf=crf)


def open_job(
    job_path: str | Path | None,
    job_root: str | Path | None,
    fingerprint: JobFingerprint,
    plan: StreamPlan,
    size: tuple[int, int],
    metadata: dict | None = None,
) -> tuple[JobDirectory, StreamState | None]:
    """The job directory of this fingerprint and the state to resume from (None: start at chunk 0).

    ``job_path`` is refused if it holds other inputs; without it the job is ``job_root/<fingerprint>``.
    ``metadata`` (e.g. ``StreamSettings.cost_metadata``) is stored in a new job's layout.
    """
    if job_path is None and job_root is None:
        raise GenerationError(
            "Neither a job directory nor a job root was given.", "Pass job_path or job_root."
        )
    layout = {
        "num_chunks": plan.num_chunks,
        "output_frames": plan.output_frames,
        "height": size[0],
        "width": size[1],
        "fps": FPS,
        **(metadata or {}),
    }
    if job_path is not None:
        job = JobDirectory.open(job_path, fingerprint, layout)
    else:
        job = JobDirectory.for_inputs(job_root, fingerprint, layout)
    try:
        state = job_state(job)
    except BaseException:
        job.close()
        raise
    if job.chunks_done and not job.is_complete:
        log.info("resuming job %s after chunk %d of %d", job.path, job.chunks_done, plan.num_chunks)
    return job, state
