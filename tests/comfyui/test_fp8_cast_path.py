"""fp8-kept layers inside a real ComfyUI take ComfyUI's casting path (comfy.ops.cast_bias_weight) under the
ModelPatcher's low-VRAM and partial loads: the fp8 bytes are what is cast (no dequantised copy), the fp8 GEMM
and the dequantize path give the file's numbers, and the LoRA's low-VRAM patches still apply."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.pack_loader import sibling_module

REPO = Path(__file__).resolve().parents[2]
BASE_FP8, LORA = "tiny_wan_fp8_scaled.safetensors", "tiny_lightx2v_rank4.safetensors"  # see conftest.py

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("fp8_cast") / "models"
    sibling_module(__file__, "conftest").write_tiny_dit(models)  # tiny fp8-scaled DiT, audio file, LoRA
    return models


def test_fp8_layers_cast_through_comfyui_in_lowvram_and_partial_loads(tiny_models):
    script = Path(__file__).with_name("check_fp8_cast_path.py")
    out = subprocess.run([os.environ["COMFYUI_PYTHON"], str(script), os.environ["COMFYUI_DIR"], str(REPO),
                          str(tiny_models), BASE_FP8, LORA, "0.75"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(figures, indent=1))
    low, partial = figures["lowvram"], figures["partial"]
    assert low["offloaded_fp8_layers"] == low["fp8_layers"] >= 8
    assert 0 < partial["offloaded_fp8_layers"] < partial["fp8_layers"]
    # the LoRA'd layers were checked (as low-VRAM patches, and some loaded with patched weights)
    assert sum("lora_change" in row for row in low["layers"].values()) == 4
    assert all(row["fp8"] <= 0.03 for row in low["layers"].values())
