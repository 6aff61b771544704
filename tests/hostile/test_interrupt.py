"""H. Kill and interrupt: a SIGKILLed render resumes to the uninterrupted result; an interrupt that arrives
after a chunk's last denoising step keeps that chunk; an interrupt before the first chunk leaves nothing."""
from __future__ import annotations

import os
import signal
import time

import pytest
import hostile_harness as hh


def test_sigkill_after_chunk_1_then_resume_equals_uninterrupted(reference, partial, box, child_cfg, spawn):
    hh.copy_job(partial, box.output)
    job = box.job()
    assert len(hh.chunk_records(job)) == 2, "the killed render should have committed chunks 0 and 1"
    child = spawn(child_cfg())
    res = child.wait()
    assert res["ok"], res.get("error") or res
    assert res["decodes"] == 1, f"resume regenerated {res['decodes']} chunks instead of only chunk 2"
    assert res["frames_sha"] == reference.frames_sha and res["count"] == reference.count
    assert hh.chunk_hashes(job) == reference.hashes


def test_parent_sigkill_while_rendering_then_resume(reference, box, child_cfg, spawn):
    """The parent kills the child as soon as the manifest lists two chunks (a real, racy kill)."""
    child = spawn(child_cfg(slow_decode=0.3))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(hh.chunk_records(box.job())) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        if child.exit_status() is not None:
            break
        time.sleep(0.01)
    try:
        os.kill(child.pid, signal.SIGKILL)
    except ProcessLookupError:  # it finished first: then the job is simply complete
        pass
    child.wait()
    done = len(hh.chunk_records(box.job()))
    assert done in (2, 3)
    res = spawn(child_cfg()).wait()
    assert res["ok"], res.get("error") or res
    assert res["frames_sha"] == reference.frames_sha
    assert hh.chunk_hashes(box.job()) == reference.hashes


def test_stale_lock_of_a_killed_render_does_not_block(partial, box, child_cfg, spawn):
    """The copied partial job carries whatever lock the SIGKILLed process left behind."""
    hh.copy_job(partial, box.output)
    res = spawn(child_cfg()).wait()
    assert res["ok"], res.get("error")
    assert "E_JOB_LOCKED" not in (res.get("error") or "")


class HostInterrupt(BaseException):
    """Like ComfyUI's InterruptProcessingException (a BaseException the host raises)."""


def _interrupting_host(host_mod, when: str, steps: int):
    class Progress:
        def __init__(self, host, total):
            self.host, self.total = host, total

        def update(self, done, preview=None):
            # ComfyUI's progress bar checks for an interrupt on every update (nodes/host.py ComfyProgress)
            if when == "last_step" and preview is None and done == steps and not self.host.fired:
                self.host.fired = True
                raise HostInterrupt()
            if when == "chunk_done" and preview is not None and not self.host.fired:
                self.host.fired = True
                raise HostInterrupt()

        def close(self):
            pass

    class Host(host_mod.TorchHost):
        fired = False
        checks = 0

        def progress(self, total, node_id=None):
            return Progress(self, total)

        def check_interrupt(self):
            Host.checks += 1
            if when == "first_step":
                raise HostInterrupt()

        def is_interrupt(self, exc):
            return isinstance(exc, HostInterrupt)

    return Host()


@pytest.mark.parametrize("when", ["last_step", "chunk_done"])
def test_interrupt_after_last_denoising_step_keeps_the_chunk(when, render, box, pack):
    host_mod = hh.sub("nodes.host")
    host_mod.set_host(_interrupting_host(host_mod, when, hh.STEPS))
    with pytest.raises(BaseException) as info:
        render()
    assert isinstance(info.value, HostInterrupt) or "E_INTERRUPTED" in str(info.value), repr(info.value)
    records = hh.chunk_records(box.job())
    assert len(records) == 1, (f"interrupt at {when} of chunk 0: the finished chunk was thrown away "
                               f"(manifest lists {len(records)} chunks)")
    host_mod.set_host(host_mod.TorchHost())
    (out, vae), = [render()]
    assert vae.decodes == 2, "the re-queued run should generate only chunks 1 and 2"


@pytest.mark.parametrize("kind", ["host", "keyboard"])
def test_interrupt_before_first_chunk_leaves_no_job_folder(kind, render, box):
    host_mod = hh.sub("nodes.host")
    if kind == "host":
        host_mod.set_host(_interrupting_host(host_mod, "first_step", hh.STEPS))
    else:
        class Host(host_mod.TorchHost):
            def check_interrupt(self):
                raise KeyboardInterrupt()

        host_mod.set_host(Host())
    before = box.state()
    with pytest.raises(BaseException):
        render()
    after = {k: v for k, v in box.state().items() if k != f"output/{hh.JOBS}"}  # the (empty) jobs root may stay
    leftovers = hh.tree_diff(before, after)
    assert not leftovers, f"an interrupt before chunk 0 left this behind:\n{leftovers}"
