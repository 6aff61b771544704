"""Job directory: finished chunks on disk as they are made, a manifest, and resume after a crash.

Layout of a job directory::

    manifest.json            fingerprint of every input, the plan summary, the chunks done (the commit record)
    chunks/00012.npy         chunk 12's kept frames, uint8 [n, H, W, 3]
    state/00012.safetensors  what chunk 13 needs to continue bit-identically (context pixels after colour)

A chunk is done only when the manifest lists it. Every file is written under a temporary name,
fsynced and renamed (atomic on POSIX and NTFS), frames and state first, the manifest last; so a
crash at any point leaves either the old or the new manifest, never a half-written chunk taken as
done. Leftover temporary files are removed when the directory is opened again.

Resume policy: a job directory belongs to one set of inputs (its fingerprint). Opened with the
same fingerprint it resumes after the last finished chunk; opened with a different one it raises
InputValidationError naming what changed (we never overwrite a user's finished work). Callers who do
not name a directory use ``JobDirectory.for_inputs(root, ...)``, whose path is derived from the
fingerprint, so different inputs land in a fresh directory automatically.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..errors import GenerationError, InputValidationError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class JobFingerprint:
    """SHA-256 per input group ("reference", "audio", "text", "model", "parameters", ...)."""

    inputs: Mapping[str, str]

    @property
    def digest(self) -> str:
        text = json.dumps(dict(sorted(self.inputs.items())), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, other: Mapping[str, str]) -> list[str]:
        keys = set(self.inputs) | set(other)
        return sorted(k for k in keys if self.inputs.get(k) != other.get(k))


def digest_json(value: object) -> str:
    """SHA-256 of a JSON-serialisable value (parameters, plan, config), key order independent."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ChunkRecord:
    index: int
    frames: int
    file: str
    sha256: str
    size: int


@dataclass
class JobManifest:
    fingerprint: str
    inputs: dict[str, str]
    layout: dict  # num_chunks, output_frames, height, width (what the final encode needs)
    chunks: list[ChunkRecord] = field(default_factory=list)
    state_file: str | None = None

    def to_json(self) -> str:
        body = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "inputs": self.inputs,
            "layout": self.layout,
            "chunks": [vars(c) for c in self.chunks],
            "state_file": self.state_file,
        }
        return json.dumps(body, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobManifest":
        body = json.loads(text)
        if body.get("format") != FORMAT_VERSION:
            raise GenerationError(
                f"job manifest format {body.get('format')} is not {FORMAT_VERSION}.",
                "Delete the job directory or pick a new one.",
            )
        chunks = [ChunkRecord(**c) for c in body["chunks"]]
        return cls(body["fingerprint"], body["inputs"], body["layout"], chunks, body.get("state_file"))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name == "posix":  # makes the rename itself durable; Windows has no directory fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _npy_bytes(frames: np.ndarray) -> bytes:
    header = np.lib.format.header_data_from_array_1_0(frames)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + np.ascontiguousarray(frames).tobytes()


class JobDirectory:
    """One render's directory. Create with ``open`` (explicit path) or ``for_inputs`` (derived path)."""

    def __init__(self, path: Path, manifest: JobManifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def for_inputs(cls, root: str | Path, fingerprint: JobFingerprint, layout: dict) -> "JobDirectory":
        """``root/<fingerprint[:16]>``: same inputs resume, different inputs start fresh."""
        return cls.open(Path(root) / fingerprint.digest[:16], fingerprint, layout)

    @classmethod
    def open(cls, path: str | Path, fingerprint: JobFingerprint, layout: dict) -> "JobDirectory":
        """Open (resume) or create the job at ``path``; refuse a directory made for other inputs."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            manifest = JobManifest.from_json(manifest_path.read_text())
            if manifest.fingerprint != fingerprint.digest:
                changed = fingerprint.differences(manifest.inputs)
                raise InputValidationError(
                    f"Job directory '{path}' was made for other inputs (changed: {', '.join(changed)}).",
                    "Pick a new job directory, delete this one to start over, or restore the original inputs "
                    "to resume it.",
                )
            job = cls(path, manifest)
            job._check_files()
        elif path.exists() and any(path.iterdir()):
            raise InputValidationError(
                f"'{path}' is not empty and holds no job manifest.",
                "Pass an empty or new folder as the job directory.",
            )
        else:
            (path / "chunks").mkdir(parents=True, exist_ok=True)
            (path / "state").mkdir(exist_ok=True)
            job = cls(path, JobManifest(fingerprint.digest, dict(fingerprint.inputs), dict(layout)))
            job._save_manifest()
        job._remove_temporaries()
        return job

    def _save_manifest(self) -> None:
        _write_atomic(self.path / MANIFEST, self.manifest.to_json().encode())

    def _remove_temporaries(self) -> None:
        for sub in (self.path, self.path / "chunks", self.path / "state"):
            for tmp in sub.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)

    def _check_files(self) -> None:
        for i, rec in enumerate(self.manifest.chunks):
            f = self.path / rec.file
            if rec.index != i or not f.is_file() or f.stat().st_size != rec.size:
                raise GenerationError(
                    f"Job directory '{self.path}' is damaged: chunk {rec.index} file '{rec.file}' is missing "
                    "or has the wrong size.",
                    "Delete the job directory to start over.",
                )
        if self.manifest.chunks:  # the newest chunk is the one a crash could have hit: check its bytes
            last = self.manifest.chunks[-1]
            if hashlib.sha256((self.path / last.file).read_bytes()).hexdigest() != last.sha256:
                raise GenerationError(
                    f"Job directory '{self.path}': chunk {last.index} does not match its hash.",
                    "Delete the job directory to start over.",
                )

    @property
    def chunks_done(self) -> int:
        return len(self.manifest.chunks)

    @property
    def frames_done(self) -> int:
        return sum(c.frames for c in self.manifest.chunks)

    @property
    def is_complete(self) -> bool:
        return self.chunks_done == self.manifest.layout["num_chunks"]

    def load_state(self) -> dict[str, torch.Tensor] | None:
        """The carry state saved with the last finished chunk (None before the first chunk)."""
        if self.manifest.state_file is None:
            return None
        return load_safetensors((self.path / self.manifest.state_file).read_bytes())

    def commit_chunk(self, index: int, frames: np.ndarray, state: Mapping[str, torch.Tensor]) -> None:
        """Persist chunk ``index``: kept frames (uint8 [n, H, W, 3]) and carry state, then mark it done."""
        if index != self.chunks_done:
            raise GenerationError(
                f"chunk {index} committed after {self.chunks_done} finished chunks.",
                "Commit chunks in order.",
            )
        h, w = self.manifest.layout["height"], self.manifest.layout["width"]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise GenerationError(
                f"chunk {index} frames have shape {frames.shape} {frames.dtype}; "
                f"expected [n, {h}, {w}, 3] uint8.",
                "This is a bug in the caller.",
            )
        data = _npy_bytes(frames)
        frames_file = f"chunks/{index:05d}.npy"
        _write_atomic(self.path / frames_file, data)
        state_file = f"state/{index:05d}.safetensors"
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        _write_atomic(self.path / state_file, save_safetensors(tensors))
        old_state = self.manifest.state_file
        self.manifest.chunks.append(
            ChunkRecord(index, len(frames), frames_file, hashlib.sha256(data).hexdigest(), len(data))
        )
        self.manifest.state_file = state_file
        self._save_manifest()
        if old_state and old_state != state_file:
            (self.path / old_state).unlink(missing_ok=True)  # only the newest state is needed

    def iter_frame_batches(self) -> Iterator[np.ndarray]:
        """Finished chunks' frames in order, one chunk in memory at a time (memory-mapped)."""
        for rec in self.manifest.chunks:
            yield np.load(self.path / rec.file, mmap_mode="r")

    def write_mp4(self, out_path: str | Path, audio=None, crf: int = 19) -> Path:
        """Encode the finished job to an H.264 mp4 with the original audio, exactly frames/25 s long."""
        from ..video.writer import write_mp4

        if not self.is_complete:
            raise GenerationError(
                f"Job '{self.path}' has {self.chunks_done} of {self.manifest.layout['num_chunks']} chunks.",
                "Run the generation again with the same inputs to finish it first.",
            )
        layout = self.manifest.layout
        return write_mp4(
            out_path,
            self.iter_frame_batches(),
            self.frames_done,
            layout["width"],
            layout["height"],
            audio=audio,
            fps=layout.get("fps", 25),
            crf=crf,
        )
