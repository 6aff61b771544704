"""Job directory: finished chunks on disk as they are made, a manifest, and resume after a crash.

Layout of a job directory::

    manifest.json            fingerprint of every input, the layout, the chunks done (the commit record)
    chunks/00012.mkv         chunk 12's kept frames, H.264 4:4:4 (video/chunk_codec.py)
    state/00012.safetensors  what chunk 13 needs to continue bit-identically (context pixels after colour)
    .lock                    held by the one render working on this job

A chunk is done only when the manifest lists it. Every file is written under a temporary name,
fsynced and renamed, chunk and state first, the manifest last; a crash at any point leaves either
the old or the new manifest. Opening a job takes its lock (a second render fails fast naming the
holder) and checks every chunk file's SHA-256. A damaged chunk is regenerated: the job rewinds to
the newest intact state before it (one every ``CHECKPOINT_EVERY`` chunks, plus the two newest),
the chunks after it become *pending*, and each regenerated chunk whose frames and state equal the
pending record keeps it; once the damaged one is rewritten and the rest are intact, the job jumps
back to its newest state. A job folder belongs to one set of inputs; other inputs are refused.
A re-roll (reroll.py) rewinds a job on purpose with ``truncate``, under the same rules.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..errors import GenerationError, InputValidationError, JobDamagedError
from ..video.chunk_codec import CHUNK_SUFFIX, decode_chunk, encode_chunk
from .frame_stats import frame_differences
from .job_folder_checks import clear_unused, refuse_foreign_folder
from .job_files import LOCK, MANIFEST, JobLock, disk_errors, rmdir_quietly, write_atomic
from .job_manifest import ChunkRecord, JobFingerprint, JobManifest, StateRecord, digest_json

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 8  # keep the state after every 8th chunk: a damaged chunk costs <= 8 chunks to redo
_REQUEUE = "Queue the Streaming Sampler again with the same inputs: it regenerates damaged chunks."

__all__ = ["CHECKPOINT_EVERY", "ChunkRecord", "JobDirectory", "JobFingerprint", "JobManifest", "digest_json"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_checkpoint(index: int) -> bool:
    return (index + 1) % CHECKPOINT_EVERY == 0


def _state_file(index: int) -> str:
    return f"state/{index:05d}.safetensors"


def _state_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


class JobDirectory:
    """One render's directory. ``open`` takes the render lock; ``close`` releases it."""

    def __init__(self, path: Path, manifest: JobManifest):
        self.path = path
        self.manifest = manifest
        self.fast_forwarded = False  # set when a repair jumped back to the newest state
        self._lock: JobLock | None = None
        self._created = False
        self._doomed: list[str] = []  # files to delete once the manifest no longer names them
        self._last_frame: tuple[int, np.ndarray] | None = None  # (chunk, its last kept frame): seams

    @classmethod
    def for_inputs(cls, root: str | Path, fingerprint: JobFingerprint, layout: dict) -> "JobDirectory":
        """``root/<fingerprint[:16]>``: same inputs resume, different inputs start fresh."""
        return cls.open(Path(root) / fingerprint.digest[:16], fingerprint, layout)

    @classmethod
    def open(cls, path: str | Path, fingerprint: JobFingerprint, layout: dict, lock: bool = True) -> "JobDirectory":
        """Open (resume) or create the job at ``path``; refuse a directory made for other inputs."""
        path = Path(path)
        refuse_foreign_folder(path)
        created = not path.exists()
        with disk_errors(f"creating the job folder '{path.name}'"):
            path.mkdir(parents=True, exist_ok=True)
        lock_is_new = not (path / LOCK).exists()
        job_lock = JobLock(path).acquire() if lock else None
        try:
            job = cls._load_or_create(path, fingerprint, layout)
        except BaseException:
            if created:
                clear_unused(path)
            if job_lock is not None and (created or lock_is_new):
                job_lock.release_and_remove()  # leave a refused folder as we found it
            elif job_lock is not None:
                job_lock.release()
            raise
        job._lock, job._created = job_lock, created
        return job

    @classmethod
    def _load_or_create(cls, path: Path, fingerprint: JobFingerprint, layout: dict) -> "JobDirectory":
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            with disk_errors(f"creating the job folder '{path.name}'"):
                (path / "chunks").mkdir(exist_ok=True)
                (path / "state").mkdir(exist_ok=True)
            job = cls(path, JobManifest(fingerprint.digest, dict(fingerprint.inputs), dict(layout)))
            job._save_manifest()
            return job
        with disk_errors(f"reading the job folder '{path.name}'"):
            text = manifest_path.read_text(errors="replace")
        manifest = JobManifest.from_json(text, f"The manifest of job folder '{path.name}'")
        if manifest.fingerprint != fingerprint.digest:
            changed = fingerprint.differences(manifest.inputs)
            raise InputValidationError(
                f"Job folder '{path.name}' was made for other inputs (changed: {', '.join(changed)}).",
                "Pick a new job_name, turn resume off to start this one over, or restore the original inputs "
                "to resume it.",
            )
        job = cls(path, manifest)
        job._remove_temporaries()
        job._verify()
        return job

    def close(self) -> None:
        """Release the render lock; a job created by this open that never got a chunk is removed
        (while still locked, so no other render can be inside it)."""
        cleared = self._created and not self.manifest.chunks and not self.manifest.pending \
            and clear_unused(self.path)
        if self._lock is not None:
            self._lock.release_and_remove() if cleared else self._lock.release()
            self._lock = None
        elif cleared:  # opened without a lock (read-only use)
            (self.path / LOCK).unlink(missing_ok=True)
            rmdir_quietly(self.path)

    def __enter__(self) -> "JobDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- integrity -----------------------------------------------------------------------------------
    def _save_manifest(self) -> None:
        write_atomic(self.path / MANIFEST, self.manifest.to_json().encode())

    def _remove_temporaries(self) -> None:
        for sub in (self.path, self.path / "chunks", self.path / "state"):
            for tmp in sub.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)

    def _file_intact(self, name: str, sha256: str, size: int | None = None) -> bool:
        f = self.path / name
        try:
            if not f.is_file() or (size is not None and f.stat().st_size != size):
                return False
            return not sha256 or _sha(f.read_bytes()) == sha256
        except OSError:
            return False

    def _chunk_intact(self, rec: ChunkRecord) -> bool:
        return self._file_intact(rec.file, rec.sha256, rec.size)

    def has_state(self, index: int) -> bool:
        """True when the carry state after chunk ``index`` is recorded and its file is intact."""
        rec = self.manifest.states.get(index)
        return rec is not None and self._file_intact(rec.file, rec.sha256)

    def _verify(self) -> None:
        """Check every chunk (and the newest state); rewind to a checkpoint before the first damage."""
        chunks = self.manifest.chunks
        if [r.index for r in chunks] != list(range(len(chunks))):
            raise JobDamagedError(f"The manifest of job folder '{self.path.name}' lists chunks out of order.",
                                  "Move that job folder away (or delete it) to start over.")
        bad = next((r.index for r in chunks if not self._chunk_intact(r)), None)
        if chunks and not self.has_state(chunks[-1].index):
            bad = chunks[-1].index if bad is None else bad
        if bad is None:
            return
        restart = max((i for i in self.manifest.states if i < bad and self.has_state(i)), default=-1)
        log.warning("job %s: chunk %d is damaged; regenerating from chunk %d (checkpoint), reusing every "
                    "chunk that comes out identical", self.path.name, bad, restart + 1)
        self.manifest.pending = chunks[restart + 1:] + self.manifest.pending
        self.manifest.chunks = chunks[: restart + 1]
        self._save_manifest()

    # -- progress ------------------------------------------------------------------------------------
    @property
    def chunks_done(self) -> int:
        return len(self.manifest.chunks)

    @property
    def frames_done(self) -> int:
        return sum(c.frames for c in self.manifest.chunks)

    @property
    def is_complete(self) -> bool:
        """Every chunk this pass needs is done (a job continued earlier with a larger cap may hold more)."""
        return self.chunks_done >= self.manifest.layout["num_chunks"]

    @property
    def output_frames(self) -> int:
        """Frames this pass outputs: the finished frames, up to this pass's cap."""
        return min(self.frames_done, int(self.manifest.layout.get("output_frames", self.frames_done)))

    def adopt_plan(self, plan) -> None:
        """Make ``plan`` (a StreamPlan of the same fingerprint, perhaps with another cap) this pass's plan.

        The cap is not part of the fingerprint: a capped pass is an exact prefix of the uncapped run,
        except its last chunk, which kept fewer frames than a longer pass needs. That chunk is dropped
        and made again from the state before it (kept: the two newest states always are), identical up
        to where the cap cut it. A shorter cap than what is done just outputs fewer frames.
        """
        done = zip(plan.chunks, self.manifest.chunks)
        short = next((c.index for c, rec in done if rec.frames < c.kept_frames), None)
        if short is not None:
            log.info("job %s: chunk %d was cut by an earlier cap; making it again for this longer pass",
                     self.path.name, short + 1)
            self.truncate(short)
        self.update_layout({"num_chunks": plan.num_chunks, "output_frames": plan.output_frames})

    def update_layout(self, values: Mapping) -> None:
        """Record this pass's ``values`` in the manifest's layout (None removes a key); the manifest is
        saved only when something changed."""
        layout = self.manifest.layout
        changed = {k: v for k, v in values.items() if layout.get(k) != v}
        if changed:
            layout.update({k: v for k, v in changed.items() if v is not None})
            for key in (k for k, v in changed.items() if v is None):
                layout.pop(key, None)
            self._save_manifest()

    def load_state(self) -> dict[str, torch.Tensor] | None:
        """The carry state saved with the last finished chunk (None before the first chunk)."""
        if not self.manifest.chunks:
            return None
        rec = self.manifest.states.get(self.manifest.chunks[-1].index)
        if rec is None:
            raise JobDamagedError(f"Job folder '{self.path.name}' has no saved state for its last chunk.",
                                  "Move that job folder away (or delete it) to start over.")
        with disk_errors(f"reading the job folder '{self.path.name}'"):
            data = (self.path / rec.file).read_bytes()
        try:
            return load_safetensors(data)
        except Exception as exc:  # safetensors raises its own error types for damaged bytes
            raise JobDamagedError(f"The resume state of job folder '{self.path.name}' is damaged.",
                                  "Move that job folder away (or delete it) to start over.") from exc

    # -- commit --------------------------------------------------------------------------------------
    def commit_chunk(self, index: int, frames: np.ndarray, state: Mapping[str, torch.Tensor],
                     stats: Mapping | None = None) -> None:
        """Persist chunk ``index``: kept frames (uint8 [n, H, W, 3]) and carry state, then mark it done.

        ``stats`` (ChunkResult.stats(): timings, colour, pass calls) is recorded with the chunk, plus its
        frame differences (frame_stats.py); informational, it never changes frames, states or hashes."""
        self._check_commit(index, frames)
        content = _sha(np.ascontiguousarray(frames).tobytes())
        state_bytes = _state_bytes(state)
        state_sha = _sha(state_bytes)
        self._doomed: list[str] = []
        record = self._reuse_pending(index, content, state_sha) or self._write_chunk(index, frames, content, state_sha)
        state_file = _state_file(index)
        write_atomic(self.path / state_file, state_bytes)
        if stats is not None:
            differences = frame_differences(frames, self._previous_last(index))
            record = replace(record, stats={**stats, **differences})
        self._last_frame = (index, np.array(frames[-1]))  # the next chunk's seam, without decoding
        self.manifest.chunks.append(record)
        self.manifest.states[index] = StateRecord(state_file, state_sha)
        self._fast_forward()
        self._doomed += [self.manifest.states.pop(i).file for i in self._obsolete_states()]
        self._save_manifest()
        self._delete_unnamed(self._doomed)

    def _previous_last(self, index: int) -> np.ndarray | None:
        """Chunk ``index - 1``'s last kept frame: cached at its commit, else read (a resumed job)."""
        if index == 0:
            return None
        cached = getattr(self, "_last_frame", None)
        if cached is not None and cached[0] == index - 1:
            return cached[1]
        try:
            frames = self.last_frames(1)
        except JobDamagedError:
            return None  # only a statistic: a damaged previous chunk is repaired elsewhere
        return frames[-1] if len(frames) else None

    def _delete_unnamed(self, names: list[str]) -> None:
        """Delete those of ``names`` the (already saved) manifest no longer names."""
        named = {r.file for r in self.manifest.chunks + self.manifest.pending}
        named |= {r.file for r in self.manifest.states.values()}
        for name in set(names) - named:  # the manifest no longer names them: safe to delete now
            (self.path / name).unlink(missing_ok=True)

    # -- rewriting history (re-roll) -----------------------------------------------------------------
    def save_state(self, index: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Record ``tensors`` as the carry state after finished chunk ``index`` (file written atomically,
        then the manifest). Used to replace a pruned or damaged state, never an intact one."""
        if not 0 <= index < self.chunks_done or self.has_state(index):
            raise GenerationError(f"save_state({index}): not done, or intact.",
                                  "This is a bug in the caller.")
        data = _state_bytes(tensors)
        write_atomic(self.path / _state_file(index), data)
        self.manifest.states[index] = StateRecord(_state_file(index), _sha(data))
        self._save_manifest()

    def truncate(self, from_chunk: int) -> None:
        """Forget chunks >= ``from_chunk``, any pending repair and their states (earlier chunks' states
        stay). The manifest is saved first; the files it no longer names are deleted after that."""
        if not 0 <= from_chunk <= self.chunks_done:
            raise GenerationError(f"truncate({from_chunk}) with {self.chunks_done} chunks done.",
                                  "This is a bug in the caller.")
        dropped = [r.file for r in self.manifest.chunks[from_chunk:] + self.manifest.pending]
        dropped += [self.manifest.states.pop(i).file for i in sorted(self.manifest.states) if i >= from_chunk]
        self.manifest.chunks, self.manifest.pending = self.manifest.chunks[:from_chunk], []
        self._save_manifest()
        self._delete_unnamed(dropped)

    def _obsolete_states(self) -> list[int]:
        """States no longer needed: all but the two newest chunks', the checkpoints, pending ones and
        those a re-rolled chunk started from (a repair must regenerate it from the very same context)."""
        newest = self.manifest.chunks[-1].index
        keep = {newest, newest - 1} | {r.index for r in self.manifest.pending}
        keep |= {k - 1 for k in self.manifest.rerolls if k > 0}
        return [i for i in self.manifest.states if i not in keep and not _is_checkpoint(i)]

    def _check_commit(self, index: int, frames: np.ndarray) -> None:
        if index != self.chunks_done:
            raise GenerationError(f"chunk {index} committed after {self.chunks_done} finished chunks.",
                                  "Commit chunks in order.")
        h, w = self.manifest.layout["height"], self.manifest.layout["width"]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise GenerationError(f"chunk {index} frames have shape {frames.shape} {frames.dtype}; "
                                  f"expected [n, {h}, {w}, 3] uint8.", "This is a bug in the caller.")

    def _write_chunk(self, index: int, frames: np.ndarray, content: str, state_sha: str) -> ChunkRecord:
        data = encode_chunk(frames)
        name = f"chunks/{index:05d}{CHUNK_SUFFIX}"
        write_atomic(self.path / name, data)
        return ChunkRecord(index, len(frames), name, _sha(data), len(data), content, state_sha)

    def _reuse_pending(self, index: int, content: str, state_sha: str) -> ChunkRecord | None:
        """During a repair: the pending record if this chunk came out identical (else drop the rest)."""
        pending = self.manifest.pending
        if not pending or pending[0].index != index:
            return None
        candidate = pending.pop(0)
        self._doomed.append(candidate.file)  # kept below if it is reused (same name as the new record)
        if candidate.content != content or candidate.state != state_sha:
            log.warning("job %s: regenerated chunk %d differs from the one on disk; regenerating the rest",
                        self.path.name, index)
            self._drop_pending()
            return None
        return candidate if self._chunk_intact(candidate) else None  # identical frames, file rewritten

    def _drop_pending(self) -> None:
        """Forget the pending chunks (and their states); their files go once the manifest is saved."""
        for rec in self.manifest.pending:
            self._doomed.append(rec.file)
            state = self.manifest.states.pop(rec.index, None)
            if state is not None:
                self._doomed.append(state.file)
        self.manifest.pending = []

    def _fast_forward(self) -> None:
        """After a repair: once every pending chunk and the newest state are intact, take them back."""
        pending = self.manifest.pending
        if not pending or pending[0].index != self.chunks_done:
            return
        if all(self._chunk_intact(r) for r in pending) and self.has_state(pending[-1].index):
            log.info("job %s: repaired; continuing after chunk %d", self.path.name, pending[-1].index)
            self.manifest.chunks.extend(pending)
            self.manifest.pending = []
            self.fast_forwarded = True

    # -- reading -------------------------------------------------------------------------------------
    def read_chunk(self, rec: ChunkRecord) -> np.ndarray:
        """One chunk's uint8 frames [n, H, W, 3], after checking its file against the manifest."""
        where = f"Chunk {rec.index + 1} of job folder '{self.path.name}'"
        try:
            data = (self.path / rec.file).read_bytes()
        except OSError as exc:
            raise JobDamagedError(f"{where} cannot be read ({exc.strerror}).", _REQUEUE) from exc
        if _sha(data) != rec.sha256:
            raise JobDamagedError(f"{where} is damaged (its file changed after it was written).", _REQUEUE)
        h, w = self.manifest.layout["height"], self.manifest.layout["width"]
        if rec.file.endswith(".npy"):  # format 1
            return np.load(self.path / rec.file, mmap_mode="r")
        return decode_chunk(data, rec.frames, h, w, where)

    def iter_frame_batches(self) -> Iterator[np.ndarray]:
        """This pass's output frames (``output_frames``) chunk by chunk, in order, one chunk in memory at a
        time, each one verified."""
        left = self.output_frames
        for rec in list(self.manifest.chunks):
            if left <= 0:
                return
            frames = self.read_chunk(rec)
            yield frames[:left]
            left -= len(frames)

    def last_output_frames(self, count: int) -> np.ndarray:
        """The last ``count`` of this pass's output frames (fewer when there are fewer)."""
        extra = self.frames_done - self.output_frames  # finished frames past this pass's cap
        frames = self.last_frames(count + extra)
        return frames[: len(frames) - extra][-count:] if count else frames[:0]

    def last_frames(self, count: int, before: int | None = None) -> np.ndarray:
        """The last ``count`` frames of the chunks before chunk ``before`` (default: of all finished
        chunks); decodes only the chunks needed, newest first. Fewer frames when there are fewer."""
        parts, have = [], 0
        for rec in reversed(self.manifest.chunks[:before]):
            if have >= count:
                break
            parts.insert(0, self.read_chunk(rec))
            have += rec.frames
        h, w = self.manifest.layout["height"], self.manifest.layout["width"]
        frames = np.concatenate(parts) if parts else np.zeros((0, h, w, 3), np.uint8)
        return frames[-count:] if count else frames[:0]

    def write_mp4(self, out_path: str | Path, audio=None, crf: int = 19) -> Path:
        """Encode the finished job to an H.264 mp4 with the original audio, exactly frames/25 s long."""
        from ..video.writer import write_mp4

        if not self.is_complete:
            raise GenerationError(
                f"Job '{self.path.name}' has {self.chunks_done} of {self.manifest.layout['num_chunks']} chunks.",
                "Run the generation again with the same inputs to finish it first.",
            )
        layout = self.manifest.layout
        return write_mp4(out_path, self.iter_frame_batches(), self.output_frames, layout["width"],
                         layout["height"], audio=audio, fps=layout.get("fps", 25), crf=crf)
