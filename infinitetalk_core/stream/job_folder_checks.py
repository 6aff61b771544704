"""Which folders a job may take over or clear: never a foreign one, never more than a job of ours wrote."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputValidationError, JobDamagedError
from .job_files import JOB_SUBFOLDERS, MANIFEST, disk_errors, has_symlinked_parts, is_job_entry, rmdir_quietly
from .job_manifest import JobManifest


def refuse_foreign_folder(path: Path) -> None:
    """A non-empty folder that is not a job of ours is never taken over (not even a lock file is added)."""
    if not path.is_dir():
        return
    if has_symlinked_parts(path):
        raise JobDamagedError(f"Job folder '{path.name}' (or its chunks/state folder) is a link to elsewhere.",
                              "Replace the link by a real folder, or pick another job_name.")
    if (path / MANIFEST).is_file():
        with disk_errors(f"reading the job folder '{path.name}'"):
            text = (path / MANIFEST).read_text(errors="replace")
        JobManifest.from_json(text, f"The manifest of job folder '{path.name}'")  # ours, or JobDamagedError
        return
    with disk_errors(f"reading the folder '{path.name}'"):
        extra = [p.name for p in path.iterdir() if not is_job_entry(p.name) or p.name == MANIFEST]
        extra += [p.name for sub in JOB_SUBFOLDERS if (path / sub).is_dir()
                  for p in (path / sub).iterdir() if not p.name.startswith(".tmp-")]
    if extra:
        raise InputValidationError(f"'{path.name}' is not empty and holds no job manifest.",
                                   "Pick another job_name, or empty that folder yourself.")


_EMPTY_LIVE = ("live", "index.m3u8")  # the playlist of a job with no chunk lists nothing


def clear_unused(path: Path) -> bool:
    """Remove the manifest and empty chunks/ and state/ of a job that never got a chunk (the lock and
    the folder itself go with the lock); False, touching nothing, when anything else is in it."""
    try:
        subs_empty = all(not (path / sub).is_dir() or all(p.name.startswith(".tmp-") or (sub, p.name) == _EMPTY_LIVE
                                                          for p in (path / sub).iterdir())
                         for sub in JOB_SUBFOLDERS)
        if not subs_empty or not all(is_job_entry(p.name) for p in path.iterdir()):
            return False
        (path / MANIFEST).unlink(missing_ok=True)
        for sub in JOB_SUBFOLDERS:
            if (path / sub).is_dir():
                for tmp in [*(path / sub).glob(".tmp-*"), *(path / sub).glob("index.m3u8")]:
                    tmp.unlink(missing_ok=True)
                rmdir_quietly(path / sub)
        return True
    except OSError:
        return False
