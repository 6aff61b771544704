"""I. Disk and OS errors while rendering (in a subprocess with faults injected below the output folder):
a full disk, a read-only or forbidden folder, a file size limit -> E_DISK saying what happened, how much
space is needed and that finished chunks are kept; never the generic E_GENERATION fallback."""
from __future__ import annotations

import re

import pytest

import hostile_harness as hh

SIZE_WORDS = re.compile(r"\d+(\.\d+)?\s*(bytes|[KMGT]i?B)\b", re.I)


def _jobs_chunks(box) -> int:
    try:
        return len(hh.chunk_records(box.job()))
    except (OSError, ValueError, KeyError):
        return 0


def test_disk_full_after_chunk_0_keeps_it_and_resumes(reference, box, child_cfg, spawn):
    res = spawn(child_cfg(fault="ENOSPC", fault_at_decode=2)).wait()
    assert not res["ok"], "the injected ENOSPC did not stop the render (did the write go around Python?)"
    text = hh.assert_coded(res["error"], "E_DISK", "space", "full")
    assert SIZE_WORDS.search(text), "the message should say how much space is needed"
    assert "kept" in text.lower(), "the message should say that finished chunks are kept"
    assert _jobs_chunks(box) == 1, "chunk 0 (finished before the disk filled) should stay committed"
    again = spawn(child_cfg()).wait()
    assert again["ok"], again.get("error")
    assert again["decodes"] == 2 and again["frames_sha"] == reference.frames_sha


FROM_START = {
    "read_only": (dict(fault="EROFS", fault_now=True), ("read-only", "read only")),
    "permission": (dict(fault="EACCES", fault_now=True), ("permission", "denied", "not allowed")),
    "disk_full": (dict(fault="ENOSPC", fault_now=True), ("space", "full")),
    "file_size_limit": (dict(rlimit_fsize=1000), ("too large", "size limit", "file size", "space")),
    "quota": (dict(fault="EDQUOT", fault_now=True), ("quota", "space")),
}


@pytest.mark.parametrize("cfg,words", list(FROM_START.values()), ids=list(FROM_START))
def test_disk_error_from_the_start_is_e_disk(cfg, words, box, child_cfg, spawn):
    res = spawn(child_cfg(**cfg)).wait()
    assert not res["ok"], "the injected disk error did not stop the render"
    hh.assert_coded(res["error"], "E_DISK", *words)


def test_file_size_limit_after_chunk_0(reference, box, child_cfg, spawn):
    res = spawn(child_cfg(fault_at_decode=2, rlimit_fsize=200)).wait()
    assert not res["ok"], "RLIMIT_FSIZE did not stop the render"
    hh.assert_coded(res["error"], "E_DISK", "too large", "size", "space")
    assert _jobs_chunks(box) == 1


@pytest.mark.parametrize("fault,retention", [("ENOSPC", "keep"), ("rlimit", "keep"),
                                             ("ENOSPC", "delete_after_combine")])
def test_disk_full_while_combining_leaves_nothing(fault, retention, reference, box, child_cfg, spawn):
    hh.copy_job(reference.output, box.output)
    cfg = dict(fault="ENOSPC") if fault == "ENOSPC" else dict(rlimit_fsize=4096)
    res = spawn(child_cfg(combine=True, fault_before_combine=True, retention=retention, **cfg)).wait()
    assert not res["ok"], "the injected disk error did not stop Video Combine"
    hh.assert_coded(res["error"], ("E_DISK", "E_FFMPEG"), "space", "full", "too large", "disk")
    left = [p.name for p in box.output.rglob("*") if p.suffix in (".mp4", ".f32") or ".part" in p.name]
    assert not left, f"left behind in output/: {left}"
    assert len(hh.chunk_records(box.job())) == 3, "the finished job must survive a failed combine"
