"""Node tests: the pack loaded as ComfyUI loads it (see tests/pack_loader.py), the plain-torch host."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared pack loader
from pack_loader import PACK_MODULE, REPO, load_pack  # noqa: E402,F401


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
