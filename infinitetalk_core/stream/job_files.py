"""File-system plumbing of job folders: safe names, atomic writes, the render lock, disk errors.

Everything here keeps a job inside its jobs folder: a job name is one plain path component, a path
is checked to resolve inside the root, and a folder is deleted only when it holds nothing but what a
job of ours writes. OS errors become ``DiskError`` saying what happened and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import DiskError, InputValidationError, JobLockedError

MANIFEST = "manifest.json"
LOCK = ".lock"
JOB_ENTRIES = {MANIFEST, LOCK, "chunks", "state", "live"}  # live/: HLS preview (video/live.py)  # what a job folder of ours may hold (+ .tmp-*)
JOB_SUBFOLDERS = ("chunks", "state", "live")
MAX_NAME = 100
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_NAME = re.compile(r"[\w][\w .-]*")  # letters/digits/_ first; then also space, dot, dash


def safe_job_name(name: str) -> str:
    """A user's job name as one safe path component (stripped); "" means "derive it from the inputs"."""
    text = str(name).strip()
    if not text:
        return ""
    problem = _name_problem(text)
    if problem:
        raise InputValidationError(
            f"job_name {text[:60]!r} {problem}.",
            "Use a plain folder name of letters, digits, '_', '-', '.' or spaces (at most 100 characters), "
            "e.g. 'interview_take2', or leave it empty for an automatic name.",
        )
    return text


def _name_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL byte"
    if len(text) > MAX_NAME:
        return f"is {len(text)} characters long"
    if "/" in text or "\\" in text or ":" in text:
        return "is a path, not a folder name"
    if text.startswith(".") or not _NAME.fullmatch(text):
        return "is not a plain folder name"
    if text.split(".")[0].upper() in _WINDOWS_DEVICES or text[-1] in ". ":
        return "is a name Windows reserves (or ends in a dot or space)"
    return None


def job_folder(root: Path, name: str, digest: str) -> Path:
    """``root/<name or digest[:16]>``, checked to resolve inside ``root``."""
    root = Path(root)
    path = root / (safe_job_name(name) or digest[:16])
    if root.resolve() not in path.resolve().parents:
        raise InputValidationError(f"job_name {name!r} leaves the jobs folder.", "Use a plain folder name.")
    return path


OS_JUNK = {".DS_Store", "Thumbs.db", "desktop.ini"}  # file managers drop these anywhere


def is_job_entry(name: str) -> bool:
    """A name a job folder of ours may hold (or a file manager's junk beside it)."""
    return name in JOB_ENTRIES or name in OS_JUNK or name.startswith(".tmp-")


def has_symlinked_parts(path: Path) -> bool:
    """A job folder whose chunks/, state/ or live/ (or the folder itself) is a link could reach elsewhere."""
    return any(p.is_symlink() for p in (Path(path), *(Path(path) / sub for sub in JOB_SUBFOLDERS)))


def is_our_job_folder(path: Path) -> bool:
    """True when ``path`` holds only what a job writes, with a manifest of ours or none at all (a render
    killed before its first manifest write)."""
    path = Path(path)
    try:
        if has_symlinked_parts(path) or not all(is_job_entry(p.name) for p in path.iterdir()):
            return False
        if not (path / MANIFEST).exists():
            return True
        body = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and {"fingerprint", "chunks", "layout"} <= set(body)


def remove_job_folder(path: Path) -> None:
    """Delete a job folder of ours (resume off); refuse anything else."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_symlink() or not is_our_job_folder(path):
        raise InputValidationError(
            f"'{path.name}' in the jobs folder is not a job folder of this pack, so it was not deleted.",
            "Pick another job_name, or move that folder away yourself.",
        )
    lock = JobLock(path).acquire()  # never delete a job another render is writing
    try:
        with disk_errors(f"deleting the old job folder '{path.name}'", target=path):
            for entry in path.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    finally:
        lock.release_and_remove()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and an atomic rename."""
    with disk_errors(f"writing {path.name}", needed=len(data), target=path):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    if os.name == "posix":  # makes the rename itself durable; Windows has no directory fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_message(exc: OSError, doing: str, needed: int | None, target) -> DiskError:
    kept = "Finished chunks are kept; queue the same workflow again to resume."
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(exc.filename or target)
        need = f"about {max(1, round(needed / 2**20))} MB more for this file, " if needed else ""
        return DiskError(f"The disk is full while {doing} ({need}{free} free).",
                         f"Free disk space or point ComfyUI's output folder at a larger disk. {kept}")
    if exc.errno == errno.EFBIG:
        return DiskError(f"The file system (or a file-size limit) refused a file this large while {doing}.",
                         f"Use a disk whose file system takes large files (not FAT32), or raise the limit. {kept}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DiskError(f"No permission to write while {doing}: {exc.strerror} ({exc.filename}).",
                         f"Make the output folder writable, or start ComfyUI with another --output-directory. {kept}")
    if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
        return DiskError(f"The file system rejected a name while {doing}: {exc.strerror}.",
                         "Use a shorter, plain name (letters, digits, '_', '-').")
    return DiskError(f"The disk failed while {doing}: {exc.strerror or exc} ({exc.filename}).",
                     f"Check the disk and the output folder. {kept}")


def _free_bytes(filename) -> str:
    try:
        probe = Path(filename or ".")
        while not probe.exists():
            probe = probe.parent
        return f"{shutil.disk_usage(probe).free / 2**20:.0f} MB"
    except OSError:
        return "unknown space"


@contextmanager
def disk_errors(doing: str, needed: int | None = None, target=None) -> Iterator[None]:
    """Turn OS errors inside the block into ``DiskError`` (full, read-only, bad name, ...); ``target``:
    the path being written (its disk is the one whose free space the message names)."""
    try:
        yield
    except DiskError:
        raise
    except OSError as exc:
        raise _disk_message(exc, doing, needed, target) from exc
    except ValueError as exc:  # e.g. "embedded null byte" from os functions
        if "null" in str(exc).lower():
            raise DiskError(f"A file name contains a NUL byte while {doing}.",
                            "Remove the NUL character from the name.") from exc
        raise


class JobLock:
    """An exclusive lock on a job folder for one render (released by the OS if the process dies)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._file = None

    def acquire(self) -> "JobLock":
        for _ in range(5):  # a lock file removed by its holder between our open and lock: open it again
            with disk_errors("locking the job folder", target=self.path):
                self._file = open(self.path, "a+b")  # noqa: SIM115 - held for the render's lifetime
            locked = _try_lock(self._file, self.path)
            if not locked or self._same_file():
                break
            _unlock(self._file)
            self._file.close()
            locked = False
        if not locked:
            holder = self._holder()
            self._file.close()
            self._file = None
            raise JobLockedError(
                f"Job folder '{self.path.parent.name}' is being rendered by {holder}.",
                "Wait for that render to finish, or stop it, then queue again (it resumes); "
                "a second render of the same job would only repeat its work.",
            )
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        self._file.seek(0)
        self._file.truncate()
        self._file.write(record.encode())
        self._file.flush()
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
            return f"process {info['pid']} on {info['host']} (since {since})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def _same_file(self) -> bool:
        try:
            return os.name == "nt" or os.fstat(self._file.fileno()).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._file is not None:
            _unlock(self._file)
            self._file.close()
            self._file = None

    def release_and_remove(self) -> None:
        """Remove the lock file and its (otherwise empty) folder, then release. On POSIX the file goes
        while still locked (a waiting opener re-checks the inode); Windows cannot delete an open file."""
        if os.name != "nt":
            self.path.unlink(missing_ok=True)
            rmdir_quietly(self.path.parent)
        self.release()
        if os.name == "nt":
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
            rmdir_quietly(self.path.parent)


    def __enter__(self) -> "JobLock":
        return self.acquire() if self._file is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def rmdir_quietly(folder: Path) -> None:
    """Remove an empty folder; leave it when it is not empty after all, or gone."""
    try:
        folder.rmdir()
    except OSError:
        pass


_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK}


def _try_lock(f, path: Path) -> bool:
    """True when locked; False when another process holds it; DiskError when locks do not work here."""
    try:
        if os.name == "nt":
            import msvcrt

            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in _HELD:
            return False
        raise DiskError(f"The file system of '{path.parent}' does not support file locks ({exc.strerror}).",
                        "Put ComfyUI's output folder on a local disk (network and FUSE mounts may not lock).") from exc


def _unlock(f) -> None:
    try:
        if os.name == "nt":
            import msvcrt

            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass
