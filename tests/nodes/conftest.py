"""Load the node pack the way ComfyUI does: an importlib spec for the pack's __init__.py under a module
name derived from its path, never with the pack root on sys.path (our ``nodes/`` would shadow
ComfyUI's ``nodes.py``)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture()
def pack_module(pack):
    """``pack_module("nodes.host")`` -> the pack's submodule (the same objects the nodes use)."""
    return lambda name: importlib.import_module(f"{PACK_MODULE}.{name}")


@pytest.fixture()
def models_dir(tmp_path, monkeypatch, pack):
    """An empty models folder with ComfyUI's sub-folder names, used by the plain-torch host."""
    root = tmp_path / "models"
    for sub in ("diffusion_models", "model_patches", "audio_encoders", "loras", "vae", "text_encoders",
                "clip_vision"):
        (root / sub).mkdir(parents=True)
    monkeypatch.setenv("INFINITETALK_MODELS_DIR", str(root))
    monkeypatch.setenv("INFINITETALK_OUTPUT_DIR", str(tmp_path / "output"))
    host = importlib.import_module(f"{PACK_MODULE}.nodes.host")
    host.set_host(host.TorchHost())
    yield root
    host.set_host(None)
