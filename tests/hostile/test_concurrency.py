"""G. Locking: two renders of one job at once -> exactly one renders, the other fails fast with E_JOB_LOCKED
naming the holder's pid; the job ends complete and correct. (Stale locks of killed renders: test_interrupt.)"""
from __future__ import annotations

import time

import pytest

import hostile_harness as hh


def _wait_for_decode(child, n: int = 1, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while child.decodes() < n:
        assert child.exit_status() is None, f"the first render ended early: {child.result()}"
        assert time.time() < deadline, "the first render never started decoding"
        time.sleep(0.01)


def test_two_renders_of_one_job_exactly_one_renders(reference, box, child_cfg, spawn):
    first = spawn(child_cfg(slow_decode=0.25))
    _wait_for_decode(first)
    second = spawn(child_cfg())
    res2 = second.wait()
    res1 = first.wait()
    assert res1["ok"], res1.get("error")
    assert not res2["ok"], "both renders ran on the same job folder"
    text = hh.assert_coded(res2["error"], "E_JOB_LOCKED", "render", "lock", "busy")
    assert str(first.pid) in text, f"the message should name the holder (pid {first.pid})"
    assert res2["t_end"] < res1["t_end"], "the second render did not fail fast (it waited for the first)"
    assert res2["decodes"] == 0
    assert res1["frames_sha"] == reference.frames_sha
    assert hh.chunk_hashes(box.job()) == reference.hashes


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "start_over"])
def test_second_render_while_a_child_renders_is_refused_and_deletes_nothing(resume, reference, box, child_cfg,
                                                                            spawn, render):
    first = spawn(child_cfg(slow_decode=0.25))
    _wait_for_decode(first, 2)
    with pytest.raises(Exception) as info:
        render(resume=resume)
    text = hh.assert_coded(info.value, "E_JOB_LOCKED", "render", "lock")
    assert str(first.pid) in text
    res = first.wait()
    assert res["ok"], f"the running render was broken by the refused one: {res.get('error')}"
    assert res["frames_sha"] == reference.frames_sha
    assert len(hh.chunk_records(box.job())) == 3


def test_delete_after_combine_while_another_render_holds_the_job(reference, box, child_cfg, spawn, render, world):
    """An old (cached) frames handle combined with delete_after_combine while the job renders again."""
    (out, _), = [render()]  # complete job, handle kept as ComfyUI would cache it
    first = spawn(child_cfg(slow_decode=0.25, inputs={"resume": False}))
    _wait_for_decode(first)
    try:
        world.nodes["InfiniteTalkVideoCombine"]().combine(25.0, "hostile/race", 23, frames=out[0],
                                                          job_retention="delete_after_combine")
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, ("E_JOB_LOCKED", "E_JOB_DAMAGED"), "job", "render", "lock")
    res = first.wait()
    assert res["ok"], f"the running render was broken by delete_after_combine: {res.get('error')}"
    assert (box.job() / "manifest.json").is_file(), "the job being rendered was deleted"
    assert len(hh.chunk_records(box.job())) == 3
