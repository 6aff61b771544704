"""In a ComfyUI process: a GGUF base stays quantized under ComfyUI's ModelPatcher, LoRAs reach its layers.

    $COMFYUI_PYTHON tests/comfyui/check_gguf_patches.py COMFYUI_DIR REPO MODELS_DIR BASE AUDIO LORA EXPECTED

Loads BASE (.gguf in diffusion_models) + AUDIO + LORA through the pack's own node with ComfyHost, then a
full load (``load_models_gpu``) and a forced low-VRAM load, and checks after each that the GGUF layers
still hold uint8 blocks and that every LoRA'd layer computes ``x @ W^T + b`` with W and b from EXPECTED
(a safetensors file of the weights after the LoRA, made by the test from the gguf package's
dequantization); finally one whole DiT forward must be finite. Prints one JSON line; exits non-zero on a
mismatch.
"""
from __future__ import annotations

import json
import sys

from check_lora_patches import comfy_loaders  # this script's folder is on sys.path when run


def _layer_errors(dit, expected: dict, gen) -> dict:
    """Relative error of each expected layer's output against F.linear with the expected weights."""
    import torch

    errors = {}
    for key, weight in expected.items():
        if not key.endswith(".weight"):
            continue
        module = dit.get_submodule(key[: -len(".weight")])
        bias = expected.get(key[: -len(".weight")] + ".bias", module.bias)
        x = torch.randn(3, weight.shape[1], generator=gen)
        want = torch.nn.functional.linear(x, weight.float(), None if bias is None else bias.float())
        errors[key] = float((module(x) - want).norm() / want.norm())
        assert errors[key] < 1e-5, f"{key}: relative error {errors[key]:.3g}"
    return errors


def _assert_quantized(dit) -> int:
    import torch

    layers = [m for m in dit.modules() if getattr(m, "gguf_type", None) is not None]
    assert layers and all(m.weight.dtype == torch.uint8 for m in layers), "GGUF layers lost their blocks"
    return len(layers)


def _forward_is_finite(dit) -> bool:
    import torch

    c, g = dit.config, torch.Generator().manual_seed(0)
    a = c.audio
    with torch.no_grad():
        out = dit(x=torch.randn(1, 16, 2, 4, 4, generator=g), t=torch.tensor([500.0]),
                  context=[torch.randn(7, c.text_dim, generator=g)],
                  clip_fea=torch.randn(1, 257, c.clip_dim, generator=g), y=torch.randn(1, 20, 2, 4, 4, generator=g),
                  audio=[torch.randn(1, 5, a.window, 2, a.feature_dim // 2, generator=g)])
    return bool(torch.isfinite(out).all())


def main(comfy_dir: str, repo: str, models_dir: str, base: str, audio: str, lora: str, expected: str) -> None:
    loaders, host = comfy_loaders(comfy_dir, repo, models_dir)
    import torch
    from safetensors.torch import load_file

    listed = loaders.InfiniteTalkModelLoader.INPUT_TYPES()["required"]["base_model"][0]
    assert base in listed, f"{base} not listed: {listed}"
    (model,) = loaders.InfiniteTalkModelLoader().load(base, audio, "fp32", "keep", "sdpa", lora_1=lora,
                                                      strength_1=0.8)
    dit, patcher = model.managed.module, model.managed.patcher
    want = load_file(expected)
    gen = torch.Generator().manual_seed(1)
    host.load_for_use([model.managed])  # full load: ComfyUI patches the (non-GGUF) stored weights
    layers = _assert_quantized(dit)
    full = _layer_errors(dit, want, gen)
    patcher.unpatch_model(patcher.offload_device)
    patcher.load(patcher.load_device, lowvram_model_memory=1)  # low VRAM: patches at cast time
    _assert_quantized(dit)
    plain = [k for k in want
             if k.endswith(".weight") and getattr(dit.get_submodule(k[:-7]), "gguf_type", None) is None]
    assert plain and all(dit.get_submodule(k[:-7]).weight_function for k in plain), "not a low-VRAM load"
    lowvram = _layer_errors(dit, want, gen)
    assert _forward_is_finite(dit)
    print(json.dumps({"gguf_layers": layers, "full_load": full, "lowvram": lowvram}))


if __name__ == "__main__":
    main(*sys.argv[1:8])
