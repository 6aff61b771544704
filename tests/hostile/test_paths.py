"""A. job_name is one safe path component; nothing outside our own job folders is ever created or deleted.
B. Validation runs before any folder exists (the node function called directly, bypassing VALIDATE_INPUTS)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import hostile_harness as hh

BAD_NAMES = {
    "dotdot": "..",
    "dot": ".",
    "parent_escape": "../evil",
    "two_up": "../..",
    "slash": "a/b",
    "backslash": "a\\b",
    "absolute": "/tmp/hostile_abs_job",
    "drive": "C:\\x",
    "drive_relative": "C:x",
    "nul": "job\x00name",
    "hidden": ".hidden",
    "inner_dotdot": "a/../..",
    "dotdot_inside": "x..y/..",
    "too_long": "x" * 101,
    "newline": "job\nname",
    "star": "job*",
    "colon": "a:b",
    "tilde_home": "~",
}


def _populate(box):
    """Existing things a bad name could hit: a foreign job folder, a user file, the jobs root itself."""
    (box.jobs / "someone_else").mkdir(parents=True)
    (box.jobs / "someone_else" / "notes.txt").write_text("not ours")
    (box.output / "keep.png").write_bytes(b"\x89PNG user image")
    (box.root / "victim").mkdir()
    (box.root / "victim" / "precious.txt").write_text("outside the output folder")


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no_resume"])
@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_job_name_is_refused_and_touches_nothing(name, resume, render, box, world):
    _populate(box)
    before = box.state()
    with pytest.raises(Exception) as info:
        render(job_name=name, resume=resume, feats=world.feats_1)
    outside = Path(name) if name.startswith("/") else None
    created_outside = outside is not None and outside.exists()
    if created_outside:
        shutil.rmtree(outside)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", "job_name")
    assert not created_outside, f"a job folder was created at {name}"
    assert box.sentinel.read_text() == "must survive"
    changed = hh.tree_diff(before, box.state())
    assert not changed, f"job_name={name!r} (resume={resume}) changed the disk:\n{changed}"


def test_absolute_job_name_pointing_at_a_real_folder_is_not_deleted(render, box, world):
    _populate(box)
    target = box.root / "victim"
    before = box.state()
    with pytest.raises(Exception) as info:
        render(job_name=str(target), resume=False, feats=world.feats_1)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", "job_name")
    assert (target / "precious.txt").read_text() == "outside the output folder"
    assert not hh.tree_diff(before, box.state())


GOOD_NAMES = {"spaces": ("my job 1", "my job 1"), "punct": ("a.b-c_d", "a.b-c_d"),
              "padded": ("  padded  ", "padded"), "hundred": ("y" * 100, "y" * 100)}


@pytest.mark.parametrize("name,folder", list(GOOD_NAMES.values()), ids=list(GOOD_NAMES))
def test_good_job_names_work(name, folder, render, box, world):
    (out, _), = [render(job_name=name, feats=world.feats_1)]
    assert (box.jobs / folder / "manifest.json").is_file()
    assert out[2] == 13


@pytest.mark.parametrize("blank", ["", "   ", "\t"], ids=["empty", "spaces", "tab"])
def test_blank_job_name_is_automatic(blank, render, box, world):
    (out, _), = [render(job_name=blank, feats=world.feats_1)]
    folders = [p for p in box.jobs.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.strip() and not folders[0].name.startswith(".")
    assert out[2] == 13


@pytest.mark.parametrize("content", ["files", "foreign_manifest", "garbage_manifest"])
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no_resume"])
def test_existing_folder_that_is_not_our_job_is_never_replaced(content, resume, render, box, world):
    folder = box.job("hostile")
    folder.mkdir(parents=True)
    (folder / "holiday.mp4").write_bytes(b"user video")
    if content == "foreign_manifest":
        (folder / "manifest.json").write_text(json.dumps({"name": "another tool", "chunks": 3}))
    elif content == "garbage_manifest":
        (folder / "manifest.json").write_bytes(b"\x00\xff not json")
    before = box.state()
    with pytest.raises(Exception) as info:
        render(job_name="hostile", resume=resume, feats=world.feats_1)
    codes = ("E_INPUT_VALIDATION",) if not resume or content == "files" else ("E_INPUT_VALIDATION", "E_JOB_DAMAGED")
    hh.assert_coded(info.value, codes, "job", "folder", "manifest")
    assert not hh.tree_diff(before, box.state()), "a folder that is not our job was changed"


def test_resume_off_on_our_own_job_starts_over(render, box, world):
    render(job_name="mine", feats=world.feats_1)
    (out, vae), = [render(job_name="mine", resume=False, feats=world.feats_1)]
    assert vae.decodes == 1, "resume=off should regenerate every chunk"
    assert len(hh.chunk_records(box.job("mine"))) == 1 and out[2] == 13


# ---------------------------------------------------------------- B: validation before any folder

BAD_SETTINGS = {
    "width_40": (dict(size="custom", width=40), "width"),
    "height_50": (dict(size="custom", height=50), "height"),
    "width_0": (dict(size="custom", width=0), "width"),
    "height_negative": (dict(size="custom", height=-32), "height"),
    "width_huge": (dict(size="custom", width=16 * 4096), "width"),
    "chunk_12": (dict(chunk_frames=12), "chunk_frames"),
    "chunk_14": (dict(chunk_frames=14), "chunk_frames"),
    "chunk_1": (dict(chunk_frames=1), "chunk_frames"),
    "context_4": (dict(context_frames=4), "context_frames"),
    "context_eq_chunk": (dict(chunk_frames=13, context_frames=13), "context_frames"),
    "context_gt_chunk": (dict(chunk_frames=13, context_frames=17), "context_frames"),
    "context_0": (dict(context_frames=0), "context_frames"),
    "steps_0": (dict(steps=0), "steps"),
    "steps_negative": (dict(steps=-3), "steps"),
    "max_frames_negative": (dict(max_frames=-1), "max_frames"),
    "color_method_bogus": (dict(color_method="sepia"), "color_method"),
    "size_bogus": (dict(size="auto_4k"), "size"),
}


@pytest.mark.parametrize("overrides,word", list(BAD_SETTINGS.values()), ids=list(BAD_SETTINGS))
def test_bad_settings_fail_before_any_folder(overrides, word, render, box, world):
    before = box.state()
    with pytest.raises(Exception) as info:
        render(job_name="", feats=world.feats_1, **overrides)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", word)
    assert not box.jobs.exists() or not any(box.jobs.iterdir()), "a job folder was created before validation"
    assert not hh.tree_diff(before, box.state())
