"""Where Video Combine may write: ``output/<subfolder>/<name>_<counter>.mp4``, never outside output/.

Inside ComfyUI the host asks ``folder_paths.get_save_image_path`` (ComfyUI's own rule and counter);
the plain-torch host uses the same semantics from here: the prefix is normalised (``a/../b`` is
``b``), and anything that ends outside the output folder, an absolute path, a drive, a NUL byte or an
empty name is refused with E_INPUT_VALIDATION.
"""
from __future__ import annotations

import ntpath
import os
import posixpath
import re
from pathlib import Path

from ..infinitetalk_core.errors import InputValidationError
from ..infinitetalk_core.stream.job_files import disk_errors

DEFAULT_PREFIX = "InfiniteTalk/talk"
_FIX = "Use a name below the output folder such as 'InfiniteTalk/talk' (no '..', no absolute path)."


def _refuse(prefix: str, problem: str) -> None:
    raise InputValidationError(f"filename_prefix {prefix[:80]!r} {problem}.", _FIX)


def output_name_parts(prefix: str) -> tuple[str, str]:
    """``prefix`` -> (subfolder, file name stem), normalised; refuses anything leaving output/."""
    text = str(prefix).strip() or DEFAULT_PREFIX
    if "\x00" in text:
        _refuse(text, "contains a NUL byte")
    unified = text.replace("\\", "/")
    if unified.startswith("/") or ntpath.splitdrive(text)[0] or re.match(r"^[A-Za-z]:", text):
        _refuse(text, "is an absolute path")
    normal = posixpath.normpath(unified)
    if normal == ".." or normal.startswith("../"):
        _refuse(text, "leaves the output folder")
    sub, _, name = normal.rpartition("/")
    if not name or name in (".", ".."):
        _refuse(text, "has no file name")
    return ("" if sub == "." else sub), name


def next_output_path(root: Path, prefix: str) -> tuple[Path, str]:
    """``root/<sub>/<name>_00001.mp4`` with the next free counter (ComfyUI's naming scheme)."""
    sub, name = output_name_parts(prefix)
    folder = Path(root) / sub
    if Path(os.path.commonpath([os.path.abspath(root), os.path.abspath(folder)])) != Path(os.path.abspath(root)):
        _refuse(prefix, "leaves the output folder")
    with disk_errors(f"creating the output folder '{sub or '.'}'"):
        folder.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(re.escape(name) + r"_(\d{5,})\.mp4$")
        used = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return folder / f"{name}_{max(used, default=0) + 1:05d}.mp4", sub


def comfy_output_path(folder_paths, prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str]:
    """The same through ComfyUI's ``get_save_image_path`` (its counter, its inside-output check)."""
    sub, name = output_name_parts(prefix)
    joined = f"{sub}/{name}" if sub else name
    try:
        folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(
            joined, folder_paths.get_output_directory(), width, height)  # fills %width%/%height% in the prefix
    except Exception as exc:  # ComfyUI raises a bare Exception with a multi-line message
        raise InputValidationError(f"filename_prefix {prefix[:80]!r} leaves the output folder.", _FIX) from exc
    with disk_errors(f"creating the output folder '{subfolder or '.'}'"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{stem}_{counter:05d}.mp4"
    while path.exists():  # ComfyUI's counter ignores files without its trailing '_': never overwrite
        counter += 1
        path = Path(folder) / f"{stem}_{counter:05d}.mp4"
    return path, subfolder
