"""Inside ComfyUI the DiT rotates q and k with ComfyUI's own fused RoPE kernel (comfy-kitchen) on CUDA."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.comfyui


def _write_tiny_dit(models: Path) -> None:
    spec = importlib.util.spec_from_file_location("comfyui_conftest", Path(__file__).with_name("conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    conftest.write_tiny_dit(models)


def test_model_loader_registers_comfy_kitchen_rope(tmp_path):
    _write_tiny_dit(tmp_path / "models")
    out = subprocess.run([os.environ["COMFYUI_PYTHON"], str(Path(__file__).with_name("check_host_rope.py")),
                          os.environ["COMFYUI_DIR"], str(REPO), str(tmp_path / "models")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["registered_for"] == ["cuda"] and result["max_error_vs_eager"] < 1e-5
