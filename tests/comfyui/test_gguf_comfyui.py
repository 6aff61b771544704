"""GGUF weights inside a real ComfyUI: listed by the Model Loader, kept quantized through full and low-VRAM
loads of the ModelPatcher, and LoRAs applied to them at use time (see check_gguf_patches.py)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from infinitetalk_core.model.layouts import is_audio_key
from tests.loading.gguf_fixtures import dequantized_state, file_type, tiny_state, write_gguf

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.comfyui
STRENGTH = 0.8


def _lora(g: torch.Generator) -> dict:
    """Two GGUF-held weights, one plain (F16-kept) weight and a bias diff, kohya/ComfyUI naming."""
    out = {}
    for module, (rows, cols) in {"blocks.0.self_attn.q": (256, 256), "blocks.0.ffn.2": (256, 512),
                                 "time_embedding.0": (256, 256)}.items():
        out[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(4, cols, generator=g) * 0.05
        out[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(rows, 4, generator=g) * 0.05
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(2.0)
    out["diffusion_model.blocks.0.ffn.2.diff_b"] = torch.randn(256, generator=g) * 0.05
    return out


def _expected(values: dict, lora: dict) -> dict:
    """Weights and biases after the LoRA at STRENGTH, from the gguf package's dequantized values."""
    out = {}
    for name, down in lora.items():
        if name.endswith(".lora_down.weight"):
            m = name.removeprefix("diffusion_model.").removesuffix(".lora_down.weight")
            up, alpha = lora[f"diffusion_model.{m}.lora_up.weight"], float(lora[f"diffusion_model.{m}.alpha"])
            out[m + ".weight"] = values[m + ".weight"] + STRENGTH * alpha / down.shape[0] * (up @ down)
            out.setdefault(m + ".bias", values[m + ".bias"])
        elif name.endswith(".diff_b"):
            m = name.removeprefix("diffusion_model.").removesuffix(".diff_b")
            out[m + ".bias"] = values[m + ".bias"] + STRENGTH * down
    return {k: v.contiguous() for k, v in out.items()}


def test_gguf_base_with_lora_in_comfyui(tmp_path):
    models = tmp_path / "models"
    for sub in ("diffusion_models", "model_patches", "loras"):
        (models / sub).mkdir(parents=True)
    state = tiny_state()
    base = {k: v for k, v in state.items() if not is_audio_key(k)}
    gguf_path = write_gguf(models / "diffusion_models" / "wan-tiny-Q8_0.gguf", base,
                           {k: file_type(k, v, "Q8_0") for k, v in base.items()})
    save_file({k: v for k, v in state.items() if is_audio_key(k)}, models / "model_patches" / "tiny_it.safetensors")
    lora = _lora(torch.Generator().manual_seed(3))
    save_file(lora, models / "loras" / "lora.safetensors")
    save_file(_expected(dequantized_state(gguf_path), lora), tmp_path / "expected.safetensors")
    out = subprocess.run([os.environ["COMFYUI_PYTHON"], str(Path(__file__).with_name("check_gguf_patches.py")),
                          os.environ["COMFYUI_DIR"], str(REPO), str(models), gguf_path.name, "tiny_it.safetensors",
                          "lora.safetensors", str(tmp_path / "expected.safetensors")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["gguf_layers"] > 0
    assert set(result["full_load"]) == set(result["lowvram"]) == {
        "blocks.0.self_attn.q.weight", "blocks.0.ffn.2.weight", "time_embedding.0.weight"}
