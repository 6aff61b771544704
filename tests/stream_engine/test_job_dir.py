"""Job directory: atomic commits, manifest, resume state, refusal of other inputs, the render lock,
damage detection and repair from a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import GenerationError, InputValidationError, JobDamagedError, JobLockedError
from infinitetalk_core.stream import job as job_module
from infinitetalk_core.stream.job import JobDirectory, JobFingerprint
from infinitetalk_core.video.probe import decoded_frame_count

LAYOUT = {"num_chunks": 3, "output_frames": 7, "height": 16, "width": 16, "fps": 25}
PRINT = JobFingerprint({"audio": "a1", "parameters": "p1"})


def _frames(n: int, value: int) -> np.ndarray:
    ramp = np.arange(16, dtype=np.uint8)[None, :, None, None] * 4
    return np.broadcast_to(ramp + value, (n, 16, 16, 3)).astype(np.uint8).copy()


def _state(value: float) -> dict:
    return {"context_pixels": torch.full((3, 1, 16, 16), value)}


def _manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_commit_and_resume(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert job.chunks_done == 0 and job.load_state() is None
    job.commit_chunk(0, _frames(3, 10), _state(0.5))
    job.commit_chunk(1, _frames(2, 20), _state(0.25))
    assert len(list((tmp_path / "job" / "state").iterdir())) == 2  # the two newest states (no checkpoint yet)
    job.close()
    again = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert (again.chunks_done, again.frames_done, again.is_complete) == (2, 5, False)
    assert again.load_state()["context_pixels"].eq(0.25).all()
    with pytest.raises(GenerationError, match="3 chunks"):
        again.write_mp4(tmp_path / "early.mp4")
    with pytest.raises(GenerationError, match="in order"):
        again.commit_chunk(3, _frames(2, 30), {})
    again.commit_chunk(2, _frames(2, 30), {})
    assert sorted(p.name for p in (tmp_path / "job" / "state").iterdir()) == ["00001.safetensors", "00002.safetensors"]
    assert sorted(_manifest(tmp_path / "job")["states"]) == ["1", "2"]  # the manifest names only files on disk
    batches = list(again.iter_frame_batches())
    assert [b.shape[0] for b in batches] == [3, 2, 2]
    assert abs(int(batches[2][0, 0, 0, 0]) - 30) <= 2  # visually lossless store, not raw bytes
    assert decoded_frame_count(again.write_mp4(tmp_path / "out.mp4")) == 7
    records = _manifest(tmp_path / "job")["chunks"]
    assert all(r["file"].endswith(".mkv") and len(r["content"]) == 64 for r in records)
    assert records[0]["content"] == __import__("hashlib").sha256(_frames(3, 10).tobytes()).hexdigest()
    again.close()


def test_chunk_store_is_much_smaller_than_raw_frames(tmp_path):
    layout = dict(LAYOUT, height=64, width=64)
    job = JobDirectory.open(tmp_path / "job", PRINT, layout)
    yy, xx = np.mgrid[:64, :64]
    frames = np.stack([np.stack([(xx + t) % 256, (yy * 2) % 256, (xx + yy) % 256], -1) for t in range(20)])
    job.commit_chunk(0, frames.astype(np.uint8), _state(0.0))
    size = (tmp_path / "job" / _manifest(tmp_path / "job")["chunks"][0]["file"]).stat().st_size
    assert size < frames.nbytes / 8
    decoded = job.read_chunk(job.manifest.chunks[0]).astype(int)
    assert np.abs(decoded - frames).mean() < 2.0
    job.close()


def test_other_inputs_are_refused_with_the_changed_group(tmp_path):
    with JobDirectory.open(tmp_path / "job", PRINT, LAYOUT) as job:
        job.commit_chunk(0, _frames(3, 10), _state(0.5))
    with pytest.raises(InputValidationError, match="changed: audio"):
        JobDirectory.open(tmp_path / "job", JobFingerprint({"audio": "a2", "parameters": "p1"}), LAYOUT)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputValidationError, match="not empty"):
        JobDirectory.open(tmp_path / "other", PRINT, LAYOUT)
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["holiday.jpg"]  # no lock file left in it


def test_derived_directories_separate_inputs(tmp_path):
    a = JobDirectory.for_inputs(tmp_path, PRINT, LAYOUT)
    b = JobDirectory.for_inputs(tmp_path, JobFingerprint({"audio": "a2", "parameters": "p1"}), LAYOUT)
    assert a.path != b.path
    a.close()
    assert a.path == JobDirectory.for_inputs(tmp_path, PRINT, LAYOUT).path


def test_a_job_that_never_got_a_chunk_leaves_no_folder(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    job.close()
    assert not (tmp_path / "job").exists()


def test_second_render_of_the_same_job_fails_fast_naming_the_holder(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    with pytest.raises(JobLockedError, match=r"E_JOB_LOCKED: .*process \d+") as err:
        JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert " Fix: " in str(err.value)
    job.commit_chunk(0, _frames(3, 10), _state(0.5))
    job.close()
    JobDirectory.open(tmp_path / "job", PRINT, LAYOUT).close()  # released: opens again


def test_half_written_files_are_never_taken_as_done(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    job.commit_chunk(0, _frames(3, 10), _state(0.5))
    job.close()
    # a crash while writing chunk 1: its temporary file exists, the manifest does not list it
    (tmp_path / "job" / "chunks" / ".tmp-abc").write_bytes(b"partial")
    again = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert again.chunks_done == 1
    assert not list((tmp_path / "job" / "chunks").glob(".tmp-*"))
    again.close()


def test_damaged_manifest_is_a_coded_error(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    job.commit_chunk(0, _frames(3, 10), _state(0.5))
    job.close()
    (tmp_path / "job" / "manifest.json").write_text('{"format": 2, "chunks": [')
    with pytest.raises(JobDamagedError, match="manifest .* damaged.* Fix: "):
        JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert (tmp_path / "job" / "chunks").is_dir()  # nothing deleted


def _job_with_chunks(tmp_path, count: int, monkeypatch, every: int = 2) -> JobDirectory:
    monkeypatch.setattr(job_module, "CHECKPOINT_EVERY", every)
    layout = dict(LAYOUT, num_chunks=count + 1, output_frames=2 * (count + 1))
    job = JobDirectory.open(tmp_path / "job", PRINT, layout)
    for i in range(count):
        job.commit_chunk(i, _frames(2, 10 * i), _state(float(i)))
    job.close()
    return job


def test_damaged_middle_chunk_rewinds_to_a_checkpoint_and_reuses_identical_chunks(tmp_path, monkeypatch):
    _job_with_chunks(tmp_path, 5, monkeypatch)  # checkpoints after chunks 1 and 3, newest after 4
    assert sorted(_manifest(tmp_path / "job")["states"]) == ["1", "3", "4"]
    damaged = tmp_path / "job" / _manifest(tmp_path / "job")["chunks"][2]["file"]
    _flip(damaged)
    job = JobDirectory.open(tmp_path / "job", PRINT, dict(LAYOUT, num_chunks=6, output_frames=12))
    assert job.chunks_done == 2 and [r.index for r in job.manifest.pending] == [2, 3, 4]
    assert job.load_state()["context_pixels"].eq(1.0).all()  # from the checkpoint after chunk 1
    with pytest.raises(JobDamagedError, match="Chunk 3 .* damaged"):
        job.read_chunk(job.manifest.pending[0])
    job.commit_chunk(2, _frames(2, 20), _state(2.0))  # regenerated identically: file rewritten
    assert job.fast_forwarded and job.chunks_done == 5 and not job.manifest.pending
    assert job.load_state()["context_pixels"].eq(4.0).all()  # continues after chunk 4
    assert len(list(job.iter_frame_batches())) == 5
    job.close()


def test_a_regenerated_chunk_that_differs_drops_what_followed_it(tmp_path, monkeypatch):
    _job_with_chunks(tmp_path, 4, monkeypatch)
    _flip(tmp_path / "job" / _manifest(tmp_path / "job")["chunks"][2]["file"])
    job = JobDirectory.open(tmp_path / "job", PRINT, dict(LAYOUT, num_chunks=5, output_frames=10))
    job.commit_chunk(2, _frames(2, 99), _state(7.0))  # not what was there (non-deterministic hardware)
    assert not job.fast_forwarded and job.chunks_done == 3 and not job.manifest.pending
    assert not (tmp_path / "job" / "chunks" / "00003.mkv").exists()
    assert job.load_state()["context_pixels"].eq(7.0).all()
    job.close()


def test_damaged_newest_state_regenerates_from_the_previous_checkpoint(tmp_path, monkeypatch):
    _job_with_chunks(tmp_path, 3, monkeypatch)  # checkpoint after chunk 1, newest after 2
    _flip(tmp_path / "job" / "state" / "00002.safetensors")
    job = JobDirectory.open(tmp_path / "job", PRINT, dict(LAYOUT, num_chunks=4, output_frames=8))
    assert job.chunks_done == 2 and job.load_state()["context_pixels"].eq(1.0).all()
    job.commit_chunk(2, _frames(2, 20), _state(2.0))
    assert job.chunks_done == 3 and job.load_state()["context_pixels"].eq(2.0).all()
    job.close()


def test_damaged_newest_chunk_costs_one_chunk(tmp_path, monkeypatch):
    _job_with_chunks(tmp_path, 3, monkeypatch, every=8)  # no checkpoint: the two newest states remain
    _flip(tmp_path / "job" / _manifest(tmp_path / "job")["chunks"][2]["file"])
    job = JobDirectory.open(tmp_path / "job", PRINT, dict(LAYOUT, num_chunks=4, output_frames=8))
    assert job.chunks_done == 2 and [r.index for r in job.manifest.pending] == [2]
    job.close()


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.mkv", "chunks/../../x.mkv", "state/00001.safetensors"])
def test_a_crafted_manifest_cannot_point_a_repair_outside_the_job(tmp_path, monkeypatch, name):
    _job_with_chunks(tmp_path, 2, monkeypatch)
    sentinel = tmp_path / "outside.mkv"
    sentinel.write_bytes(b"keep me")
    body = _manifest(tmp_path / "job")
    body["chunks"][1]["file"] = name
    (tmp_path / "job" / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(JobDamagedError, match="names files that are not job files"):
        JobDirectory.open(tmp_path / "job", PRINT, dict(LAYOUT, num_chunks=3, output_frames=6))
    assert sentinel.read_bytes() == b"keep me"


@pytest.mark.parametrize("name", ["con", "NUL.txt", "lpt1", "take.", "../x", "a/b", ".hidden", "x" * 101, "a\x00b"])
def test_job_names_are_one_plain_folder_name_on_every_os(name):
    from infinitetalk_core.stream.job_files import safe_job_name

    with pytest.raises(InputValidationError, match=r"^E_INPUT_VALIDATION: job_name .* Fix: "):
        safe_job_name(name)


def test_plain_job_names_are_kept():
    from infinitetalk_core.stream.job_files import safe_job_name

    assert [safe_job_name(n) for n in ("interview_take2", " my job 1 ", "v1.2-final", "")] == [
        "interview_take2", "my job 1", "v1.2-final", ""]


def test_the_job_lock_works_as_a_context_manager(tmp_path):
    from infinitetalk_core.errors import JobLockedError
    from infinitetalk_core.stream.job_files import JobLock

    with JobLock(tmp_path) as held:
        assert held._file is not None
        with pytest.raises(JobLockedError):
            JobLock(tmp_path).acquire()
    JobLock(tmp_path).acquire().release()  # released on leaving the block
