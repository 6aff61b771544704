"""Which model files the Model Loader lists: only those it can load, judged from their headers.

A header read takes milliseconds; the verdict is kept per (path, size, modification time), so refreshing
the editor's lists reads each file once. A file that is not listed but named anyway (an API workflow, an
old graph) is refused by the loader's VALIDATE_INPUTS with the reason and what to do, instead of
ComfyUI's bare "value not in list".
"""
from __future__ import annotations

import functools
import os

from .host import get_host

AUDIO_KINDS = ("infinitetalk", "multitalk")


@functools.lru_cache(maxsize=1024)
def _verdict(path: str, size: int, mtime: int, role: str) -> str | None:
    """None if the file at ``path`` can be the ``role`` ("base" or "audio") of a load, else the reason."""
    from ..infinitetalk_core.errors import InfiniteTalkError
    from ..infinitetalk_core.model.identify import identify_file
    from ..infinitetalk_core.model.load_checks import check_base_file

    try:
        identity = identify_file(path)
        if role == "base":
            check_base_file(identity, None)
        elif identity.kind not in AUDIO_KINDS:
            return (f"{os.path.basename(path)} is {identity.describe()}, not InfiniteTalk or MultiTalk audio "
                    "weights.")
    except InfiniteTalkError as exc:
        return str(exc)
    return None


def unloadable_reason(folder: str, name: str, role: str) -> str | None:
    """Why ``name`` in ``folder`` cannot be loaded as ``role`` (missing, another kind of model, damaged),
    or None when it can."""
    if not isinstance(name, str):  # linked from another node: the loader checks it when it runs
        return None
    path = get_host().model_path(folder, name)
    if path is None:
        return (f"{name!r} is not in the '{folder}' model folder: put the file into ComfyUI/models/{folder}/ "
                "and press R in the editor to refresh the lists.")
    try:
        stat = os.stat(path)
    except OSError as exc:
        return f"{name!r} in the '{folder}' model folder cannot be read ({exc.strerror})."
    return _verdict(path, stat.st_size, int(stat.st_mtime_ns), role)


def loadable(folder: str, names: list[str], role: str) -> list[str]:
    """``names`` without the files that cannot be loaded as ``role``."""
    return [name for name in names if unloadable_reason(folder, name, role) is None]
