"""Run a stream into a job directory (resumable, bounded memory), then encode the final mp4.

    job = render_to_job(job_dir, model, vae, plan, references, features, text, settings, ...)
    job.write_mp4("out.mp4", audio="speech.wav")       # or render_video(...) for both steps

Each chunk's kept frames are written (uint8) as soon as they are decoded, on a background thread while
the next chunk samples (``BackgroundCommitter``: in order, one commit in flight, so host RAM holds at most
two chunks of uint8 frames whatever the video length). Rerunning with the same inputs resumes after the last finished chunk;
see job.py for what "same inputs" means and what happens otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from ..errors import GenerationError, InputValidationError, JobDamagedError
from .generate import ChunkResult, StreamState, generate_chunks
from .hooks import StreamHooks
from .host import ImageEncoder, TextContexts, VideoVAE, tensor_digest
from .job import JobDirectory, JobFingerprint, digest_json
from .plan import FPS, StreamPlan
from .reroll import apply_reroll
from .settings import StreamSettings
from .sources import ReferenceFrames
from .validation import audio_persons, validate_stream_inputs

if TYPE_CHECKING:
    from ..video.live import LiveOutput

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
    dub_mask=None,
    previous_frames: torch.Tensor | None = None,
) -> JobFingerprint:
    """Hash of every input group: what decides whether a job directory may be resumed (the dub mask and
    the clip continued only when given, so jobs without them keep their fingerprints)."""
    config = getattr(model, "config", None)
    audio = hashlib.sha256(
        "".join(tensor_digest(p) for p in audio_persons(audio_features)).encode()
    ).hexdigest()
    groups = {
        "reference": references.fingerprint(),
        "audio": audio,
        "text": text.fingerprint(),
        "model": digest_json(
            {"identity": model_identity or model_fingerprint(model), "config": repr(config)}
        ),
        "vae": digest_json(_identity(vae, type(vae).__name__)),
        "image_encoder": digest_json(_identity(image_encoder, type(image_encoder).__name__)),
        "masks": "none" if ref_target_masks is None else tensor_digest(ref_target_masks),
        "plan": digest_json(_plan_identity(plan)),
        "parameters": digest_json(settings.to_json()),
    }
    if dub_mask is not None:
        groups["dub_mask"] = dub_mask.fingerprint()
    if previous_frames is not None:
        groups["previous_frames"] = tensor_digest(previous_frames)
    return JobFingerprint(groups)


def _plan_identity(plan: StreamPlan) -> dict:
    """The plan's fields without its chunks (derived) and without the cap: a capped pass makes an exact
    prefix of the uncapped run, so a later pass continues it (``JobDirectory.adopt_plan``). Recorded as
    if uncapped (so uncapped jobs of earlier versions keep their fingerprints); lead_context and
    first_frame only when set."""
    fields = {k: v for k, v in vars(plan).items() if k != "chunks"}
    fields.update(max_frames=None, output_frames=plan.num_audio_frames)
    if not fields.get("lead_context"):
        fields.pop("lead_context", None)
    if not fields.get("first_frame"):
        fields.pop("first_frame", None)
    return fields


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
    reroll: tuple[int, int] | None = None,
    dub_mask=None,
    previous_frames: torch.Tensor | None = None,
    live: "LiveOutput | None" = None,
) -> JobDirectory:
    """Generate every chunk not yet in the job directory; return the (complete) job.

    job_path: the job directory (refused if it holds another input set), or None to use
    ``job_root/<fingerprint>`` (resumes the same inputs, starts fresh for others). model_identity: a
    stable id of the weights (e.g. file hashes + LoRAs); default: hash of the model's state dict.
    on_chunk_saved(result, io_seconds) runs in this thread after each chunk is on disk, in order: the
    chunks are written on a background thread while the next one samples, so that is at the next chunk
    boundary (or the end). ``hooks.on_chunk`` fires when a chunk is handed to that writer, before it is
    on disk, and its ``frames`` are then derived from the uint8 frames (see ``ChunkResult``); every
    commit has finished when this returns or raises. reroll: (chunk, seed), chunk 0-based: regenerate that
    chunk with ``seed`` and the later ones with the run's seed, keeping the chunks before it (see
    reroll.py; the same reroll again resumes instead of re-rolling again). dub_mask, previous_frames: as
    ``generate_chunks``'s (keep the source outside a mask; continue a clip). live: a video/live.py
    ``LiveOutput`` (HLS preview in the job folder), synced after opening and at the end.
    """
    validate_stream_inputs(
        model, plan, references, audio_features, text, settings, image_encoder, ref_target_masks, None,
        dub_mask=dub_mask, previous_frames=previous_frames,
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
        dub_mask,
        previous_frames,
    )
    job, _ = open_job(job_path, job_root, fingerprint, plan, references.size,
                      settings.cost_metadata(plan.num_chunks))
    try:
        if reroll is not None:
            apply_reroll(job, *_reroll_pair(reroll), context_frames=plan.context_frames)
        if live is not None:
            live.sync(job)
        if job.is_complete:
            log.info("job %s is already complete (%d chunks)", job.path, job.chunks_done)
            return job

        def chunks_from(state: StreamState | None):
            return generate_chunks(model, vae, plan, references, audio_features, text, settings,
                                   image_encoder=image_encoder, ref_target_masks=ref_target_masks, state=state,
                                   hooks=hooks, device=device, chunk_seeds=dict(job.manifest.rerolls),
                                   dub_mask=dub_mask, previous_frames=previous_frames)

        run_job(job, chunks_from, committer=BackgroundCommitter(job, on_chunk_saved, live=live))
        if live is not None:
            live.sync(job)
        return job
    finally:
        job.close()


def _reroll_pair(reroll: object) -> tuple[int, int]:
    """``reroll`` as (chunk, seed); the values themselves are checked by ``apply_reroll``."""
    if not isinstance(reroll, (tuple, list)) or len(reroll) != 2:
        raise InputValidationError(f"reroll must be a (chunk, seed) pair, got {reroll!r}.",
                                   "Pass reroll=(chunk index from 0, seed), or None.")
    return reroll[0], reroll[1]


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
    *,
    committer: "BackgroundCommitter | None" = None,
) -> JobDirectory:
    """Generate and commit every missing chunk; after a repair jumps ahead, continue from there.

    committer: the writer to use (e.g. one whose ``poll`` the caller's hooks call between sampling steps,
    see nodes/run.py); default: a new ``BackgroundCommitter(job, on_chunk_saved)``.
    """
    committer = committer or BackgroundCommitter(job, on_chunk_saved)
    while not job.is_complete:
        job.fast_forwarded = False
        commit_chunks(job, chunks_from(job_state(job)), committer=committer)
        if not job.fast_forwarded:
            break
    return job


def commit_chunks(
    job: JobDirectory,
    chunks: Iterable[ChunkResult],
    on_chunk_saved: Callable[[ChunkResult, float], None] | None = None,
    *,
    committer: "BackgroundCommitter | None" = None,
) -> JobDirectory:
    """Write each chunk's kept frames and resume state to ``job`` as soon as it is generated.

    The writes run on a background thread while the next chunk is generated (see ``BackgroundCommitter``);
    every commit has finished when this returns or raises. Stops early (closing the generator) when a
    repair fast-forwarded the job past the chunks it would generate next.
    """
    committer = committer or BackgroundCommitter(job, on_chunk_saved)
    try:
        for result in chunks:
            if not committer.submit(result):  # a repair fast-forwarded the job: nothing left to generate
                break
        committer.finish()
    except BaseException:
        error = committer.wait()  # never return (or unwind) with a commit half done
        if error is not None:
            raise error  # the writer's error (e.g. E_DISK) wins; the generation's is its __context__
        raise
    finally:
        getattr(chunks, "close", lambda: None)()  # a stopped generator frees its device tensors now
    return job


class BackgroundCommitter:
    """Commit chunks to a job on one worker thread while the caller generates the next chunk.

    Strictly in order and at most one commit in flight: ``submit`` waits for the previous commit, so host
    RAM holds at most two chunks of uint8 frames. Everything the caller sees happens in the caller's
    thread: a writer error (already coded by ``disk_errors``, e.g. E_DISK) is raised at the next
    ``submit``, ``poll`` or ``finish``, and ``on_chunk_saved(result, io_seconds)`` runs there once the chunk
    is committed (call ``poll()`` between sampling steps to hear of it before the next chunk is done).
    While a repair is pending (it may fast-forward the job) commits run in the calling thread instead.
    """

    def __init__(
        self,
        job: JobDirectory,
        on_chunk_saved: Callable[[ChunkResult, float], None] | None = None,
        background: bool = True,
        live: "LiveOutput | None" = None,
    ):
        self.job, self.on_chunk_saved, self.background = job, on_chunk_saved, background
        self.live = live  # video/live.py LiveOutput: a segment per committed chunk (never raises)
        self._thread: threading.Thread | None = None
        self._result: ChunkResult | None = None  # submitted, not yet reported
        self._error: BaseException | None = None
        self._seconds = 0.0

    def submit(self, result: ChunkResult) -> bool:
        """Start committing ``result`` once the previous commit has finished (and been reported).

        Returns False when the job fast-forwarded (a repair took its remaining chunks back): the caller
        must stop generating. ``result`` is then committed only if its own commit did that (commits run in
        the calling thread while a repair is pending, so that is known at once).
        """
        self._collect(block=True)
        if self.job.fast_forwarded:
            return False
        frames, state = result.frames_uint8(), result.state.to_tensors()
        result.release_float_frames()  # the next chunk must not sample beside the float frames
        self._result, self._error = result, None
        if not self.background or self.job.manifest.pending:
            self._commit(result.index, frames, state)
            self._collect(block=True)
            return not self.job.fast_forwarded
        self._thread = threading.Thread(target=self._commit, args=(result.index, frames, state),
                                        name=f"commit-chunk-{result.index}")
        self._thread.start()
        return True

    def poll(self) -> None:
        """Report the finished commit, if any, without waiting (raises its error)."""
        self._collect(block=False)

    def finish(self) -> None:
        """Wait for the commit in flight and report it (raises its error)."""
        self._collect(block=True)

    def wait(self) -> BaseException | None:
        """Wait for the commit in flight without reporting it; return its error (for unwinding)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._result, self._error = self._error, None, None
        return error

    def _commit(self, index: int, frames, state: dict) -> None:
        start = time.perf_counter()
        try:
            stats = self._result.stats() if self._result is not None else None  # informational, for reports
            self.job.commit_chunk(index, frames, state, stats=stats)
            if self.live is not None:  # after the commit: the playlist only names committed chunks
                self.live.add(self.job, index, frames)
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
        self._seconds = time.perf_counter() - start

    def _collect(self, block: bool) -> None:
        if self._thread is not None:
            if not block and self._thread.is_alive():
                return
            self._thread.join()
            self._thread = None
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        if result is not None and self.on_chunk_saved is not None:
            self.on_chunk_saved(result, self._seconds)


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
        job.adopt_plan(plan)  # this pass's cap (a later pass continues a capped one)
        state = job_state(job)
    except BaseException:
        job.close()
        raise
    if job.chunks_done and not job.is_complete:
        log.info("resuming job %s after chunk %d of %d", job.path, job.chunks_done, plan.num_chunks)
    return job, state
