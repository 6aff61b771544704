"""A job folder's commit record (manifest.json): input fingerprint, layout, chunks done, saved states.

Format 2 (this release) stores chunks as compressed video files with the SHA-256 of the file (integrity)
and of the uint8 frames before encoding (``content``: what bit-identical resume is checked against),
and the carry state of some chunks (the newest, plus a checkpoint every few chunks from which a
damaged chunk can be regenerated). Format 1 folders (raw .npy chunks, one state) still open.
``rerolls`` (chunk index -> the seed that chunk was regenerated with, see stream/reroll.py) is written
only when there is one, so the manifest of a job that was never re-rolled is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

from ..errors import JobDamagedError
from ..sampling.seeds import MAX_SEED

FORMAT_VERSION = 2
_CHUNK_FILE = re.compile(r"chunks/\d{5,}\.(mkv|npy)")
_STATE_FILE = re.compile(r"state/\d{5,}\.safetensors")
READABLE_FORMATS = (1, 2)
_MOVE_AWAY = "Move that job folder away (or delete it) to start over."


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
    sha256: str  # of the file's bytes
    size: int
    content: str | None = None  # SHA-256 of the uint8 frames before encoding (None in format 1)
    state: str | None = None  # SHA-256 of the carry state after this chunk
    # informational (reports): seconds per stage, colour change, pass calls, frame differences; only in
    # manifests written since stats exist, and only serialised when present (older records unchanged)
    stats: dict | None = None

    def to_dict(self) -> dict:
        """The record as JSON fields; ``stats`` only when present."""
        body = asdict(self)
        if body["stats"] is None:
            del body["stats"]
        return body

    @classmethod
    def from_dict(cls, body: dict) -> "ChunkRecord":
        """Parse one record; stats that are not a mapping are dropped (they never decide anything)."""
        record = cls(**body)
        if record.stats is None or isinstance(record.stats, dict):
            return record
        return replace(record, stats=None)


@dataclass(frozen=True)
class StateRecord:
    file: str
    sha256: str


@dataclass
class JobManifest:
    fingerprint: str
    inputs: dict[str, str]
    layout: dict  # num_chunks, output_frames, height, width, fps
    chunks: list[ChunkRecord] = field(default_factory=list)
    states: dict[int, StateRecord] = field(default_factory=dict)  # chunk index -> state after it
    pending: list[ChunkRecord] = field(default_factory=list)  # chunks being re-verified after damage
    format: int = FORMAT_VERSION
    rerolls: dict[int, int] = field(default_factory=dict)  # chunk index -> seed used instead of the run's

    def to_json(self) -> str:
        """The manifest as JSON; ``rerolls`` only when non-empty (older jobs' manifests stay the same)."""
        body = {
            "format": FORMAT_VERSION,  # a resumed format-1 job is written as format 2 from then on
            "fingerprint": self.fingerprint,
            "inputs": self.inputs,
            "layout": self.layout,
            "chunks": [c.to_dict() for c in self.chunks],
            "states": {str(k): asdict(v) for k, v in sorted(self.states.items())},
            "pending": [c.to_dict() for c in self.pending],
        }
        if self.rerolls:
            body["rerolls"] = {str(k): v for k, v in sorted(self.rerolls.items())}
        return json.dumps(body, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "JobManifest":
        """Parse a manifest; anything unreadable is ``JobDamagedError`` (never a traceback)."""
        try:
            body = json.loads(text)
            version = body.get("format")
            if version not in READABLE_FORMATS:
                raise JobDamagedError(f"{where} has job format {version!r}; this release reads "
                                      f"{READABLE_FORMATS}.", "Update the node pack, or pick a new job_name.")
            chunks = [ChunkRecord.from_dict(c) for c in body["chunks"]]
            states = {int(k): StateRecord(**v) for k, v in body.get("states", {}).items()}
            if version == 1 and body.get("state_file") and chunks:
                states[chunks[-1].index] = StateRecord(body["state_file"], "")
            pending = [ChunkRecord.from_dict(c) for c in body.get("pending", [])]
            _check_file_names(where, [r.file for r in chunks + pending], [r.file for r in states.values()])
            rerolls = _read_rerolls(where, body.get("rerolls", {}))
            return cls(body["fingerprint"], dict(body["inputs"]), dict(body["layout"]), chunks, states,
                       pending, version, rerolls)
        except JobDamagedError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise JobDamagedError(
                f"{where} is damaged and cannot be read ({_problem(exc)}).",
                "Move that job folder away (or delete it) to start over, or pick another job_name.",
            ) from exc


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"the field {exc} is missing"
    if isinstance(exc, ValueError):  # json.JSONDecodeError included
        return "it is not valid JSON"
    return "a field has the wrong type"


def _read_rerolls(where: str, raw: object) -> dict[int, int]:
    """{chunk index >= 0: seed in 0..2**64-1}; anything else is a damaged manifest."""
    if not isinstance(raw, dict):
        raise JobDamagedError(f"{where} has a re-roll record ('rerolls') that is not a mapping.", _MOVE_AWAY)
    rerolls = {}
    for key, seed in raw.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise JobDamagedError(f"{where} records a re-roll for chunk {str(key)[:20]!r}.", _MOVE_AWAY)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise JobDamagedError(f"{where} records the re-roll seed {str(seed)[:30]!r} (not 0..2**64-1).",
                                  _MOVE_AWAY)
        rerolls[int(key)] = seed
    return rerolls


def _check_file_names(where: str, chunk_files: list[str], state_files: list[str]) -> None:
    """Every file a manifest names lies inside its job folder, under the names a job writes: a crafted
    manifest can never make a repair read or delete anything else."""
    bad = [f for f in chunk_files if not _CHUNK_FILE.fullmatch(str(f))]
    bad += [f for f in state_files if not _STATE_FILE.fullmatch(str(f))]
    if bad:
        raise JobDamagedError(f"{where} names files that are not job files ({str(bad[0])[:80]!r}).",
                              "Move that job folder away (or delete it) to start over.")
