"""In a ComfyUI process: the Model Loader hands ComfyUI's comfy-kitchen RoPE kernel to the DiT for CUDA,
and that kernel (its CPU fallback, registered here for the CPU) gives our eager rotation's forward.

    $COMFYUI_PYTHON tests/comfyui/check_host_rope.py COMFYUI_DIR REPO MODELS_DIR

Prints one JSON line; exits non-zero on a mismatch.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def _comfy_loaders(comfy_dir: str, repo: str, models_dir: str):
    spec = importlib.util.spec_from_file_location("check_lora_patches", Path(__file__).with_name("check_lora_patches.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.comfy_loaders(comfy_dir, repo, models_dir)


def main(comfy_dir: str, repo: str, models_dir: str) -> None:
    loaders, host = _comfy_loaders(comfy_dir, repo, models_dir)
    import comfy.quant_ops
    import torch

    (model,) = loaders.InfiniteTalkModelLoader().load("tiny_wan.safetensors", "tiny_it.safetensors", "fp32",
                                                      "dequantize", "sdpa")
    rope = sys.modules["infinitetalk_pack.infinitetalk_core.model.rope"]
    kernel = comfy.quant_ops.ck.apply_rope1
    registered = [(f.kernel, f.devices) for f in rope._fused]
    assert registered == [(kernel, ("cuda",))], registered
    dit = model.managed.module
    grid = (3, 4, 6)
    cfg = dit.config
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    q = torch.randn(2, tokens, cfg.num_heads, cfg.dim // cfg.num_heads)
    split_grid = (grid[0], grid[1] // 2, grid[2] // 2)
    eager = rope.rope_tables(split_grid, cfg.rope_split, "cpu", torch.float32).rotate(q)
    rope.set_fused_rope(kernel, devices=("cpu",))
    fused = rope.rope_tables(split_grid, cfg.rope_split, "cpu", torch.float32).rotate(q)
    error = float((fused - eager).abs().max())
    assert error < 1e-5, error
    print(json.dumps({"registered_for": list(registered[0][1]), "max_error_vs_eager": error}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
