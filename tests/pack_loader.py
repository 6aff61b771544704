"""Load the node pack the way ComfyUI does: an importlib spec for the pack's __init__.py under a module
name of its own, never with the pack root on sys.path (our ``nodes/`` would shadow ComfyUI's
``nodes.py``). Shared by tests/nodes and tests/hostile (and its render subprocesses): one copy of the
pack per process."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_MODULE = "infinitetalk_pack_under_test"


def load_pack(module_name: str = PACK_MODULE):
    if module_name in sys.modules:
        return sys.modules[module_name]
    init = REPO / "__init__.py"
    spec = importlib.util.spec_from_file_location(module_name, init, submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def sibling_module(test_file: str, name: str):
    """Another test module next to ``test_file``, loaded by path (pytest runs with --import-mode=importlib,
    so test modules are not importable by name): its fixtures and helpers can then be shared."""
    path = Path(test_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_sibling_{path.parent.name}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
