"""Beyond the contract's list: a job folder that is a symlink, a frames handle whose job was replaced, an
output folder that is a file, a ComfyUI-cached handle after the job folder was deleted."""
from __future__ import annotations

import shutil

import pytest

import hostile_harness as hh


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "start_over"])
def test_job_folder_symlinked_elsewhere_is_not_followed(resume, render, box, world):
    victim = box.root / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    box.jobs.mkdir(parents=True)
    box.job().symlink_to(victim, target_is_directory=True)
    try:
        render(resume=resume, feats=world.feats_1)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "job", "folder", "link")
    assert (victim / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"], "the render wrote through the symlink"


def test_chunks_folder_symlinked_elsewhere(render, box, world):
    (out, _), = [render(feats=world.feats_1, job_name="linked")]
    job = box.job("linked")
    victim = box.root / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    shutil.rmtree(job / "chunks")
    (job / "chunks").symlink_to(victim, target_is_directory=True)
    try:
        render(feats=world.feats_1, job_name="linked", resume=False)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, ("E_INPUT_VALIDATION", "E_JOB_DAMAGED"), "job", "folder", "link", "chunk")
    assert (victim / "precious.txt").read_text() == "keep me", "resume=off deleted files through a symlink"


def test_old_frames_handle_after_the_job_was_replaced(render, box, world):
    """ComfyUI caches the sampler's output: an old handle must never hand out another job's frames."""
    (first, _), = [render(feats=world.feats_1, job_name="again", seed=1)]
    old_digest = hh.frames_digest(first[0])
    (second, _), = [render(feats=world.feats_1, job_name="again", seed=2, resume=False)]
    new_digest = hh.frames_digest(second[0])
    assert old_digest != new_digest
    try:
        seen = hh.frames_digest(first[0])
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_JOB_DAMAGED", "job", "queue", "sampler", "changed", "replaced")
    else:
        assert seen == old_digest, "the old handle now streams the replacing job's frames"


def test_old_frames_handle_after_the_job_was_deleted(render, box, world):
    (first, _), = [render(feats=world.feats_1, job_name="gone")]
    shutil.rmtree(box.job("gone"))
    with pytest.raises(Exception) as info:
        world.nodes["InfiniteTalkVideoCombine"]().combine(25.0, "hostile/gone", 23, frames=first[0])
    hh.assert_coded(info.value, "E_JOB_DAMAGED", "no longer exists", "deleted", "missing")
    assert not list(box.output.rglob("*.mp4"))


def test_output_folder_is_a_file(render, box, world, monkeypatch):
    blocker = box.root / "output_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("INFINITETALK_OUTPUT_DIR", str(blocker))
    with pytest.raises(Exception) as info:
        render(feats=world.feats_1)
    hh.assert_coded(info.value, ("E_DISK", "E_INPUT_VALIDATION"), "folder", "directory", "not a")
    assert blocker.read_text() == "not a folder"


def test_delete_after_combine_never_follows_a_symlinked_job(render, box, world):
    (out, _), = [render(feats=world.feats_1, job_name="todelete")]
    job = box.job("todelete")
    victim = box.root / "victim"
    shutil.copytree(job, victim)  # a full copy of the job, so reading it through the link would work
    (victim / "precious.txt").write_text("keep me")
    shutil.rmtree(job)
    job.symlink_to(victim, target_is_directory=True)
    try:
        world.nodes["InfiniteTalkVideoCombine"]().combine(25.0, "hostile/del", 23, frames=out[0],
                                                          job_retention="delete_after_combine")
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, ("E_JOB_DAMAGED", "E_INPUT_VALIDATION"), "job", "folder", "link")
    assert (victim / "precious.txt").read_text() == "keep me", "delete_after_combine deleted through a symlink"
    assert (victim / "manifest.json").is_file()
