"""Device-side uint8 post-processing and the background chunk writer (render.BackgroundCommitter).

Chunk k is written (encode + files + manifest) on a worker thread while chunk k+1 samples: in order, one
commit at a time, writer errors raised in the caller's thread with their code, and nothing half-written
when generation stops.
"""

from __future__ import annotations

import errno
import threading
import time

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import DiskError
from infinitetalk_core.stream import job as job_module
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.hooks import StreamHooks
from infinitetalk_core.stream.job import JobDirectory
from infinitetalk_core.stream.job_files import disk_errors
from infinitetalk_core.stream.render import BackgroundCommitter, render_to_job
from infinitetalk_core.video.writer import frames_to_uint8, frames_to_uint8_on_device

WAIT = 8.0  # seconds a test waits for something that should happen at once


def _old_cpu_path(pixels: torch.Tensor) -> np.ndarray:
    """The post-processing before this change, verbatim: float32 to the CPU, then frames_to_uint8."""
    x = ((pixels.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255)
    return x.round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def _job_frames(job) -> np.ndarray:
    return np.concatenate(list(job.iter_frame_batches()))


def test_device_uint8_is_bit_identical_to_frames_to_uint8():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 21, 24, 40, generator=g) * 2.4 - 1.2  # beyond [-1, 1] too: clipped
    ties = (torch.arange(256, dtype=torch.float32) + 0.5) / 127.5 - 1.0  # (x+1)*127.5 lands near k + 0.5
    pixels[0, 0, 0, : 40] = ties[:40]
    pixels[1, 0, :6, :] = ties[:240].reshape(6, 40)
    pixels[2, 1, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, -1.0 - 1e-7, 1.0 + 1e-7])
    pixels[:, 2, 1, :] = torch.nextafter(ties[:40], torch.tensor(2.0))  # just above / below the ties
    pixels[:, 3, 1, :] = torch.nextafter(ties[:40], torch.tensor(-2.0))
    expected = frames_to_uint8(pixels)
    assert np.array_equal(expected, _old_cpu_path(pixels))
    for batch in (1, 4, 16, 21, 64):
        got = frames_to_uint8_on_device(pixels, batch=batch)
        assert got.dtype == torch.uint8 and got.device == pixels.device and got.shape == (21, 24, 40, 3)
        assert np.array_equal(got.numpy(), expected), f"batch {batch}"
    sliced = pixels[:, 5:17]  # a non-contiguous view, as the kept frames are
    assert np.array_equal(frames_to_uint8_on_device(sliced).numpy(), frames_to_uint8(sliced))
    half = pixels.to(torch.bfloat16)
    assert np.array_equal(frames_to_uint8_on_device(half).numpy(), frames_to_uint8(half))


def test_chunk_results_carry_uint8_equal_to_the_float_path(make_inputs):
    inputs = make_inputs(30, color_method="lab", color_strength=1.0)
    plan = inputs.plan()
    for result in generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder):
        exact = result.frames  # the decoded, colour-corrected float frames (before any writer released them)
        assert result.pixels_uint8.dtype == torch.uint8 and result.pixels_uint8.device.type == "cpu"
        assert np.array_equal(result.frames_uint8(), frames_to_uint8(exact))
        assert result.state.context_pixels.dtype == torch.float32
        result.release_float_frames()
        derived = result.frames
        assert derived.shape == exact.shape and derived.dtype == torch.float32
        assert (derived - exact).abs().max() <= 0.5 / 127.5 + 1e-6
        assert np.array_equal(frames_to_uint8(derived), result.frames_uint8())


class _Recorder:
    """Wraps JobDirectory.commit_chunk: slow, records order, concurrency and the thread of each commit."""

    def __init__(self, monkeypatch, delay: float = 0.0, wait_for=None):
        self.delay, self.wait_for = delay, wait_for
        self.order, self.events, self.threads = [], [], set()
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        original = JobDirectory.commit_chunk
        recorder = self

        def commit_chunk(job, index, frames, state, stats=None):
            with recorder.lock:
                recorder.active += 1
                recorder.max_active = max(recorder.max_active, recorder.active)
                recorder.order.append(index)
                recorder.events.append(("start", index))
            recorder.threads.add(threading.current_thread().name)
            try:
                if recorder.wait_for is not None:
                    recorder.wait_for(index)
                time.sleep(recorder.delay)
                original(job, index, frames, state, stats)
            finally:
                with recorder.lock:
                    recorder.active -= 1
                    recorder.events.append(("end", index))

        monkeypatch.setattr(JobDirectory, "commit_chunk", commit_chunk)


def test_commit_of_chunk_k_overlaps_sampling_of_chunk_k_plus_1(make_inputs, tmp_path, monkeypatch):
    inputs = make_inputs(40)
    plan = inputs.plan()
    stepped = {i: threading.Event() for i in range(plan.num_chunks)}
    overlapped = {}

    def wait_for_next_chunk(index):  # a commit that only ends once the next chunk has taken a DiT step
        if index + 1 < plan.num_chunks:
            overlapped[index] = stepped[index + 1].wait(WAIT)

    def on_step(p):
        stepped[p.chunk].set()

    recorder = _Recorder(monkeypatch, wait_for=wait_for_next_chunk)
    job = render_to_job(tmp_path / "job", *inputs.args(plan), image_encoder=inputs.encoder,
                        hooks=StreamHooks(on_step=on_step))
    assert job.is_complete
    assert overlapped == {i: True for i in range(plan.num_chunks - 1)}, (
        "chunk k+1 did not start sampling while chunk k was being written")
    assert threading.current_thread().name not in recorder.threads  # the writes ran on a worker thread


def test_commits_are_in_order_one_at_a_time_and_reported_after_they_end(make_inputs, tmp_path, monkeypatch):
    inputs = make_inputs(40)
    plan = inputs.plan()
    recorder = _Recorder(monkeypatch, delay=0.15)
    saved, main = [], threading.current_thread()

    def on_chunk_saved(result, io_seconds):
        assert threading.current_thread() is main
        with recorder.lock:
            saved.append(result.index)
            recorder.events.append(("saved", result.index))
        assert io_seconds >= 0.15
        assert not result.float_frames  # the writer dropped them: the next chunk never sampled beside them

    clean = render_to_job(tmp_path / "clean", *inputs.args(plan), image_encoder=inputs.encoder)
    job = render_to_job(tmp_path / "job", *inputs.args(plan), image_encoder=inputs.encoder,
                        on_chunk_saved=on_chunk_saved)
    n = plan.num_chunks
    assert recorder.order[n:] == list(range(n)) and saved == list(range(n))
    assert recorder.max_active == 1, "two chunks were being written at once"
    events = recorder.events[2 * n:]  # this render's (the clean one came first)
    for i in range(n):
        assert events.index(("end", i)) < events.index(("saved", i))  # reported once it is on disk
        if i + 1 < n:
            assert events.index(("end", i)) < events.index(("start", i + 1))
    assert _job_frames(job).tobytes() == _job_frames(clean).tobytes()
    assert job.load_state()["context_pixels"].equal(clean.load_state()["context_pixels"])


def _fail_chunk(monkeypatch, index: int):
    """Every write of chunk ``index``'s frames fails as on a full disk (through the real disk_errors)."""
    original = job_module.write_atomic

    def write_atomic(path, data):
        if path.name.startswith(f"{index:05d}") and path.parent.name == "chunks":
            with disk_errors(f"writing {path.name}", needed=len(data), target=path):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    monkeypatch.setattr(job_module, "write_atomic", write_atomic)


def _commit_all(job_path, inputs, plan, background: bool):
    from infinitetalk_core.stream.render import fingerprint_inputs, open_job, run_job

    fingerprint = fingerprint_inputs(inputs.model, inputs.vae, plan, inputs.references, inputs.features,
                                     inputs.text, inputs.settings, inputs.encoder)
    job, _ = open_job(job_path, None, fingerprint, plan, inputs.references.size)
    decoded = []
    try:
        def chunks_from(state):
            for result in generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder, state=state):
                decoded.append(result.index)
                yield result

        with pytest.raises(DiskError) as info:
            run_job(job, chunks_from, committer=BackgroundCommitter(job, background=background))
        return info.value, job.chunks_done, decoded
    finally:
        job.close()


def test_writer_error_surfaces_with_its_code_in_the_caller(make_inputs, tmp_path, monkeypatch):
    inputs = make_inputs(40)
    plan = inputs.plan()
    _fail_chunk(monkeypatch, 1)
    sync_error, sync_done, _ = _commit_all(tmp_path / "sync", inputs, plan, background=False)
    error, done, decoded = _commit_all(tmp_path / "background", inputs, plan, background=True)
    assert error.code == sync_error.code == "E_DISK"
    assert type(error) is type(sync_error)
    assert "00001" in str(error) and "00001" in str(sync_error)  # names the chunk whose write failed
    assert done == sync_done == 1  # chunk 0 is kept
    assert decoded == [0, 1, 2]  # raised at the next chunk boundary, chunk 2 was not committed


def test_writer_error_is_not_lost_when_the_last_chunk_fails(make_inputs, tmp_path, monkeypatch):
    inputs = make_inputs(20)
    plan = inputs.plan()
    _fail_chunk(monkeypatch, plan.num_chunks - 1)
    error, done, decoded = _commit_all(tmp_path / "job", inputs, plan, background=True)
    assert error.code == "E_DISK" and done == plan.num_chunks - 1
    assert decoded == list(range(plan.num_chunks))


def test_generation_error_waits_for_the_commit_in_flight_and_resumes_bit_identically(
        make_inputs, tmp_path, monkeypatch):
    inputs = make_inputs(40, color_method="lab", color_reference="previous_tail")
    plan = inputs.plan()
    clean = render_to_job(tmp_path / "clean", *inputs.args(plan), image_encoder=inputs.encoder)
    crashed = threading.Event()

    def slow_after_the_crash(index):  # chunk 1's commit is still running when chunk 2 crashes
        if index == 1:
            assert crashed.wait(WAIT)
            time.sleep(0.3)

    def crash(p):
        if p.chunk == 2 and p.step == 1:
            crashed.set()
            raise RuntimeError("simulated crash in the middle of chunk 2")

    recorder = _Recorder(monkeypatch, wait_for=slow_after_the_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        render_to_job(tmp_path / "crashed", *inputs.args(plan), image_encoder=inputs.encoder,
                      hooks=StreamHooks(on_step=crash))
    assert recorder.active == 0, "render_to_job returned while a chunk was still being written"
    assert ("end", 1) in recorder.events
    monkeypatch.undo()
    resumed = []
    job = render_to_job(tmp_path / "crashed", *inputs.args(plan), image_encoder=inputs.encoder,
                        on_chunk_saved=lambda result, io: resumed.append(result.index))
    assert resumed == [2, 3, 4]  # chunks 0 and 1 were complete
    assert _job_frames(job).tobytes() == _job_frames(clean).tobytes()
    assert job.load_state()["context_pixels"].equal(clean.load_state()["context_pixels"])
