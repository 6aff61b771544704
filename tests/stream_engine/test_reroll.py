"""Re-roll one chunk of a job: earlier chunks stay on disk untouched, the chunk and the ones after it are
regenerated (bit-identical to a fresh run with those per-chunk seeds when the float state was kept),
the same re-roll queued again resumes, and bad requests leave the job as it was."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import InputValidationError, JobDamagedError
from infinitetalk_core.stream import job as job_module
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.job import JobDirectory, JobFingerprint
from infinitetalk_core.stream.job_manifest import JobManifest
from infinitetalk_core.stream.render import render_to_job
from infinitetalk_core.stream.reroll import apply_reroll, rebuilt_state

NEW_SEED = 1234
FRAMES = 29  # 3 chunks of 13 frames with 5 context frames
LAYOUT = {"num_chunks": 4, "output_frames": 8, "height": 16, "width": 16, "fps": 25}
PRINT = JobFingerprint({"audio": "a1", "parameters": "p1"})


# -- helpers --------------------------------------------------------------------------------------------
def _render(inputs, plan, path, **kw) -> tuple[JobDirectory, list[int]]:
    """render_to_job and the chunks it saved."""
    saved: list[int] = []
    job = render_to_job(path, *inputs.args(plan), image_encoder=inputs.encoder,
                        on_chunk_saved=lambda result, io: saved.append(result.index), **kw)
    return job, saved


def _contents(job: JobDirectory) -> list[str]:
    return [r.content for r in job.manifest.chunks]


def _fresh(inputs, plan, chunk_seeds: dict) -> list[str]:
    """SHA-256 of each chunk's uint8 frames of an uninterrupted run with these per-chunk seeds."""
    results = generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder, chunk_seeds=chunk_seeds)
    return [hashlib.sha256(r.frames_uint8().tobytes()).hexdigest() for r in results]


def _files(path) -> dict[str, tuple[int, str]]:
    """Every file of a job folder: (mtime_ns, sha256)."""
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def _frames(n: int, value: int) -> np.ndarray:
    ramp = np.arange(16, dtype=np.uint8)[None, :, None, None] * 4
    return np.broadcast_to(ramp + value, (n, 16, 16, 3)).astype(np.uint8).copy()


def _state(value: float, next_chunk: int) -> dict:
    return {"next_chunk": torch.tensor([next_chunk]), "context_pixels": torch.full((3, 2, 16, 16), value)}


def _synthetic_job(tmp_path, sizes=(3, 2)) -> JobDirectory:
    """A job with finished chunks of ``sizes`` frames (no model), CHECKPOINT_EVERY = 8: states pruned."""
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    for i, n in enumerate(sizes):
        job.commit_chunk(i, _frames(n, 40 * i), _state(float(i), i + 1))
    return job


# -- manifest -------------------------------------------------------------------------------------------
def test_manifest_round_trip_with_and_without_rerolls():
    plain = JobManifest("f" * 64, {"audio": "a"}, dict(LAYOUT))
    assert "rerolls" not in json.loads(plain.to_json())  # manifests of existing jobs are unchanged
    assert JobManifest.from_json(plain.to_json(), "m").rerolls == {}
    plain.rerolls = {3: 2**64 - 1, 0: 5}
    body = json.loads(plain.to_json())
    assert body["rerolls"] == {"0": 5, "3": 2**64 - 1}
    assert JobManifest.from_json(plain.to_json(), "m").rerolls == {0: 5, 3: 2**64 - 1}


@pytest.mark.parametrize("rerolls", [{"-1": 5}, {"x": 5}, {"1": -1}, {"1": 2**64}, {"1": "5"}, {"1": 1.5},
                                     {"1": True}, [1, 5]])
def test_a_damaged_reroll_record_is_a_coded_error(rerolls):
    body = json.loads(JobManifest("f" * 64, {}, dict(LAYOUT)).to_json())
    body["rerolls"] = rerolls
    with pytest.raises(JobDamagedError, match="(?i)re-roll"):
        JobManifest.from_json(json.dumps(body), "The manifest")


# -- re-roll through render_to_job ----------------------------------------------------------------------
def test_reroll_keeps_earlier_chunks_and_equals_a_fresh_run(make_inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(job_module, "CHECKPOINT_EVERY", 1)  # the float state after chunk 0 is kept
    inputs = make_inputs(FRAMES)
    plan = inputs.plan()
    job, _ = _render(inputs, plan, tmp_path / "job")
    assert plan.num_chunks == 3 and 0 in job.manifest.states
    original, before = _contents(job), _files(tmp_path / "job")

    job, saved = _render(inputs, plan, tmp_path / "job", reroll=(1, NEW_SEED))
    assert saved == [1, 2] and job.is_complete and job.manifest.rerolls == {1: NEW_SEED}
    after = _files(tmp_path / "job")
    assert after["chunks/00000.mkv"] == before["chunks/00000.mkv"]  # same bytes, never rewritten
    rerolled = _contents(job)
    assert rerolled[0] == original[0] and all(a != b for a, b in zip(rerolled[1:], original[1:]))
    assert rerolled == _fresh(inputs, plan, {1: NEW_SEED})  # bit-identical to an uninterrupted run

    for again in ((1, NEW_SEED), None):  # the same workflow queued again (or a plain resume) does nothing
        job, saved = _render(inputs, plan, tmp_path / "job", reroll=again)
        assert saved == [] and _files(tmp_path / "job") == after and _contents(job) == rerolled


def test_reroll_after_the_float_state_was_pruned_rebuilds_it_from_the_frames(make_inputs, tmp_path):
    inputs = make_inputs(FRAMES)
    plan = inputs.plan()
    job, _ = _render(inputs, plan, tmp_path / "job")
    assert sorted(job.manifest.states) == [1, 2]  # the two newest: the state after chunk 0 is gone
    original, chunk0 = _contents(job), _files(tmp_path / "job")["chunks/00000.mkv"]
    with JobDirectory.open(tmp_path / "job", _fingerprint(job), job.manifest.layout) as opened:
        assert apply_reroll(opened, 1, NEW_SEED, plan.context_frames)
        state = opened.load_state()
    exact = next(iter(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))).state.context_pixels
    assert int(state["next_chunk"][0]) == 1 and state["context_pixels"].shape == exact.shape
    levels = (state["context_pixels"] - exact).abs() * 127.5  # uint8 levels: rounding + the H.264 store
    assert levels.mean() < 4 and levels.max() < 32  # the toy frames are noise: the codec's worst case

    job, saved = _render(inputs, plan, tmp_path / "job", reroll=(1, NEW_SEED))  # recorded: just resumes
    assert saved == [1, 2] and job.is_complete and job.manifest.rerolls == {1: NEW_SEED}
    assert 0 in job.manifest.states  # the rebuilt context stays: a later repair regenerates the same chunk
    assert _files(tmp_path / "job")["chunks/00000.mkv"] == chunk0
    assert _contents(job)[0] == original[0] and _contents(job)[1] != original[1]


def test_reroll_with_the_original_seed_reproduces_the_original_chunks(make_inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(job_module, "CHECKPOINT_EVERY", 1)
    inputs = make_inputs(FRAMES)
    plan = inputs.plan()
    job, _ = _render(inputs, plan, tmp_path / "job")
    original = _contents(job)
    job, saved = _render(inputs, plan, tmp_path / "job", reroll=(1, inputs.settings.seed))
    assert saved == [1, 2] and _contents(job) == original


def test_refused_rerolls_leave_a_rendered_job_untouched(make_inputs, tmp_path):
    inputs = make_inputs(FRAMES)
    plan = inputs.plan()
    with pytest.raises(InputValidationError, match="only 0 of 3 chunks are done"):
        _render(inputs, plan, tmp_path / "new", reroll=(1, 5))
    assert not (tmp_path / "new").exists()  # a refused new job leaves no folder
    with pytest.raises(InputValidationError, match=r"\(chunk, seed\) pair"):
        _render(inputs, plan, tmp_path / "new", reroll=5)


def _fingerprint(job: JobDirectory) -> JobFingerprint:
    return JobFingerprint(dict(job.manifest.inputs))


# -- apply_reroll on a job folder (no model) ------------------------------------------------------------
@pytest.mark.parametrize("chunk, seed, message", [
    (4, 1, r"chunk 5: the job has chunks 1\.\.4"),
    (-1, 1, r"chunk 0: the job has chunks 1\.\.4"),
    (3, 1, r"chunk 4: only 2 of 4 chunks are done"),
    (1, -1, "reroll seed must be at least 0"),
    (1, 2**64, r"above 2\*\*64-1"),
    (1, 1.5, "whole number"),
    (1, True, "whole number"),
    ("1", 1, "whole number"),
])
def test_bad_rerolls_are_refused_and_leave_the_job_untouched(tmp_path, chunk, seed, message):
    job = _synthetic_job(tmp_path)
    before, manifest = _files(tmp_path / "job"), job.manifest.to_json()
    with pytest.raises(InputValidationError, match=f"^E_INPUT_VALIDATION: .*{message}.* Fix: "):
        apply_reroll(job, chunk, seed, 2)
    assert _files(tmp_path / "job") == before and job.manifest.to_json() == manifest
    job.close()


def test_rerolling_the_next_chunk_only_records_the_seed(tmp_path):
    job = _synthetic_job(tmp_path)
    before = _files(tmp_path / "job")
    assert apply_reroll(job, 2, 99, 2)
    assert job.manifest.rerolls == {2: 99} and job.chunks_done == 2
    assert {k: v for k, v in _files(tmp_path / "job").items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    assert not apply_reroll(job, 2, 99, 2)  # the same re-roll again changes nothing
    assert apply_reroll(job, 1, 7, 2) and job.manifest.rerolls == {1: 7}  # an earlier one drops it
    assert job.chunks_done == 1 and not (tmp_path / "job" / "chunks" / "00001.mkv").exists()
    job.close()
    assert JobManifest.from_json((tmp_path / "job" / "manifest.json").read_text(), "m").rerolls == {1: 7}


def test_rebuilt_state_spans_earlier_chunks_when_one_kept_too_few_frames(tmp_path):
    job = _synthetic_job(tmp_path, sizes=(3, 2, 2))
    assert sorted(job.manifest.states) == [1, 2]
    assert apply_reroll(job, 2, NEW_SEED, 4)  # state after chunk 1 kept: used as is
    assert job.load_state()["context_pixels"].eq(1.0).all()
    state = rebuilt_state(job, 2, 4)  # last 4 frames before chunk 2: chunk 0's last 2 + chunk 1's 2
    decoded = np.concatenate([job.read_chunk(r) for r in job.manifest.chunks[:2]])[-4:]
    expected = torch.from_numpy(decoded.copy()).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert state["context_pixels"].dtype == torch.float32
    assert torch.allclose(state["context_pixels"], expected)
    assert state["next_chunk"].tolist() == [2] and state["next_chunk"].dtype == torch.int64
    with pytest.raises(InputValidationError, match="kept 3 frames, fewer than the 4 context frames"):
        apply_reroll(job, 1, NEW_SEED, 4)
    assert job.chunks_done == 2 and job.manifest.rerolls == {2: NEW_SEED}
    job.close()


def test_a_pruned_state_is_rebuilt_before_the_later_chunks_are_dropped(tmp_path):
    job = _synthetic_job(tmp_path, sizes=(3, 2, 2))  # states after chunks 1 and 2 only
    assert apply_reroll(job, 1, NEW_SEED, 2)
    assert job.chunks_done == 1 and sorted(job.manifest.states) == [0] and job.has_state(0)
    state = job.load_state()
    decoded = job.read_chunk(job.manifest.chunks[0])[-2:]
    expected = torch.from_numpy(decoded.copy()).permute(3, 0, 1, 2) / 127.5 - 1
    assert torch.allclose(state["context_pixels"], expected)
    assert sorted(p.name for p in (tmp_path / "job" / "state").iterdir()) == ["00000.safetensors"]
    assert sorted(p.name for p in (tmp_path / "job" / "chunks").iterdir()) == ["00000.mkv"]
    job.close()
    with JobDirectory.open(tmp_path / "job", PRINT, LAYOUT) as again:  # the saved job reopens intact
        assert again.chunks_done == 1 and again.manifest.rerolls == {1: NEW_SEED}
        assert int(again.load_state()["next_chunk"][0]) == 1


def test_truncate_drops_a_pending_repair_and_keeps_earlier_states(tmp_path, monkeypatch):
    monkeypatch.setattr(job_module, "CHECKPOINT_EVERY", 2)
    job = _synthetic_job(tmp_path, sizes=(2, 2, 2, 2))  # checkpoints after chunks 1 and 3
    job.close()
    chunk2 = tmp_path / "job" / "chunks" / "00002.mkv"
    chunk2.write_bytes(chunk2.read_bytes()[:-9])  # damaged: the job rewinds, chunks 2 and 3 pending
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    assert job.chunks_done == 2 and [r.index for r in job.manifest.pending] == [2, 3]
    job.truncate(2)
    assert job.chunks_done == 2 and not job.manifest.pending and sorted(job.manifest.states) == [1]
    assert sorted(p.name for p in (tmp_path / "job" / "chunks").iterdir()) == ["00000.mkv", "00001.mkv"]
    assert sorted(p.name for p in (tmp_path / "job" / "state").iterdir()) == ["00001.safetensors"]
    job.close()
