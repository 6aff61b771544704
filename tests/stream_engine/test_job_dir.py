"""Job directory: atomic commits, manifest, resume state, refusal of other inputs, damage detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import GenerationError, InputValidationError
from infinitetalk_core.stream.job import JobDirectory, JobFingerprint
from infinitetalk_core.video.probe import decoded_frame_count

LAYOUT = {"num_chunks": 3, "output_frames": 7, "height": 16, "width": 16, "fps": 25}
PRINT = JobFingerprint({"audio": "a1", "parameters": "p1"})


def _frames(n: int, value: int) -> np.ndarray:
    return np.full((n, 16, 16, 3), value, np.uint8)


def test_commit_and_resume(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert job.chunks_done == 0 and job.load_state() is None
    job.commit_chunk(0, _frames(3, 10), {"context_pixels": torch.full((3, 1, 16, 16), 0.5)})
    job.commit_chunk(1, _frames(2, 20), {"context_pixels": torch.full((3, 1, 16, 16), 0.25)})
    assert len(list((tmp_path / "job" / "state").iterdir())) == 1  # only the newest state is kept
    again = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert (again.chunks_done, again.frames_done, again.is_complete) == (2, 5, False)
    assert again.load_state()["context_pixels"].eq(0.25).all()
    with pytest.raises(GenerationError, match="3 chunks"):
        again.write_mp4(tmp_path / "early.mp4")
    with pytest.raises(GenerationError, match="in order"):
        again.commit_chunk(3, _frames(2, 30), {})
    again.commit_chunk(2, _frames(2, 30), {})
    batches = list(again.iter_frame_batches())
    assert [b.shape[0] for b in batches] == [3, 2, 2] and batches[2][0, 0, 0, 0] == 30
    assert decoded_frame_count(again.write_mp4(tmp_path / "out.mp4")) == 7


def test_other_inputs_are_refused_with_the_changed_group(tmp_path):
    JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    with pytest.raises(InputValidationError, match="changed: audio"):
        JobDirectory.open(tmp_path / "job", JobFingerprint({"audio": "a2", "parameters": "p1"}), LAYOUT)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputValidationError, match="not empty"):
        JobDirectory.open(tmp_path / "other", PRINT, LAYOUT)


def test_derived_directories_separate_inputs(tmp_path):
    a = JobDirectory.for_inputs(tmp_path, PRINT, LAYOUT)
    b = JobDirectory.for_inputs(tmp_path, JobFingerprint({"audio": "a2", "parameters": "p1"}), LAYOUT)
    assert a.path != b.path and a.path == JobDirectory.for_inputs(tmp_path, PRINT, LAYOUT).path


def test_half_written_files_are_never_taken_as_done(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    job.commit_chunk(0, _frames(3, 10), {})
    # a crash while writing chunk 1: its temporary file exists, the manifest does not list it
    (tmp_path / "job" / "chunks" / ".tmp-abc").write_bytes(b"partial")
    again = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert again.chunks_done == 1
    assert not list((tmp_path / "job" / "chunks").glob(".tmp-*"))


def test_damaged_chunk_is_detected(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    job.commit_chunk(0, _frames(3, 10), {})
    path = (
        tmp_path / "job" / json.loads((tmp_path / "job" / "manifest.json").read_text())["chunks"][0]["file"]
    )
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(GenerationError, match="hash"):
        JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    path.write_bytes(bytes(data[:-5]))
    with pytest.raises(GenerationError, match="wrong size"):
        JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
