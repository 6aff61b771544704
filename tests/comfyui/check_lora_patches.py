"""In a ComfyUI process: the Model Loader's LoRA patches really land in the weights (run with COMFYUI_PYTHON).

    $COMFYUI_PYTHON tests/comfyui/check_lora_patches.py COMFYUI_DIR REPO MODELS_DIR BASE LORA STRENGTH

Loads BASE (fp8 scaled, fp8_weights="keep") + tiny_it + LORA through the pack's own node with ComfyHost,
then (1) ``load_models_gpu`` (full load: ComfyUI patches the stored weights) and (2) a forced low-VRAM load
(ComfyUI leaves the weights alone and patches at cast time), and checks both against
``W + strength * (alpha / rank) * up @ down`` and ``b + strength * diff_b`` computed here from the files.
Prints one JSON line of measured errors; exits non-zero on a mismatch.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path


def load_pack(repo: Path):
    """Import the pack as ComfyUI does (a package from its folder), return its loaders module."""
    spec = importlib.util.spec_from_file_location("infinitetalk_pack", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["infinitetalk_pack"] = pack
    spec.loader.exec_module(pack)
    return sys.modules["infinitetalk_pack.nodes.loaders"], sys.modules["infinitetalk_pack.nodes.host"]


def comfy_loaders(comfy_dir: str, repo: str, models_dir: str):
    """Start ComfyUI's modules on the CPU with ``models_dir``'s folders, import the pack -> (loaders, host)."""
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import folder_paths

    for folder in ("diffusion_models", "model_patches", "loras"):
        folder_paths.add_model_folder_path(folder, str(Path(models_dir) / folder), is_default=True)
    loaders, host_module = load_pack(Path(repo))
    host = host_module.get_host()
    assert host.name == "comfyui", host.name
    return loaders, host


def expected_tensors(models: Path, base: str, lora: str, strength: float) -> dict:
    """key -> float32 weight/bias after the LoRA, from the files (fp8 dequantised with its scale)."""
    from safetensors.torch import load_file

    state = load_file(str(models / "diffusion_models" / base))
    lora_state = load_file(str(models / "loras" / lora))
    out = {}
    for name in lora_state:
        if name.endswith(".lora_down.weight"):
            m = name.removeprefix("diffusion_model.").removesuffix(".lora_down.weight")
            down = lora_state[name].float()
            up = lora_state[f"diffusion_model.{m}.lora_up.weight"].float()
            alpha = float(lora_state[f"diffusion_model.{m}.alpha"])
            w = state[m + ".weight"].float() * state[m + ".scale_weight"].float()
            out[m + ".weight"] = (w, w + strength * (alpha / down.shape[0]) * (up @ down))
        elif name.endswith(".diff_b"):
            m = name.removeprefix("diffusion_model.").removesuffix(".diff_b")
            b = state[m + ".bias"].float()
            out[m + ".bias"] = (b, b + strength * lora_state[name].float())
    return out


def check(expected: dict, weights) -> dict:
    """Compare the model's current (dequantised) tensors with ``expected``; returns error ratios."""
    import torch

    errors = {}
    for key, (before, after) in expected.items():
        got = weights(key).float()
        change = (after - before).abs().mean().item()
        # fp8 storage: stochastic rounding to e4m3 costs < 1 ulp (2^-3 relative); fp32 biases are exact
        err = (got - after).abs().mean().item()
        errors[key] = round(err / change, 4)
        limit = 0.25 if key.endswith(".weight") else 1e-4
        assert change > 0 and err < limit * change, f"{key}: error {err:.3g} vs LoRA change {change:.3g}"
        assert torch.isfinite(got).all()
    return errors


def main(comfy_dir: str, repo: str, models_dir: str, base: str, lora: str, strength: str) -> None:
    loaders, host = comfy_loaders(comfy_dir, repo, models_dir)
    import torch

    models = Path(models_dir)
    (model,) = loaders.InfiniteTalkModelLoader().load(base, "tiny_it.safetensors", "fp32", "keep", "sdpa",
                                                      lora_1=lora, strength_1=float(strength))
    dit, patcher = model.managed.module, model.managed.patcher
    expected = expected_tensors(models, base, lora, float(strength))
    kept = [k for k in expected if k.endswith(".weight")]
    assert all(dit.get_submodule(k[:-7]).weight.dtype == torch.float8_e4m3fn for k in kept), "fp8 not kept"

    def stored(key):  # what the module holds now, dequantised
        module, _, attr = key.rpartition(".")
        m = dit.get_submodule(module)
        t = getattr(m, attr).float()
        return t * m.scale_weight if attr == "weight" and getattr(m, "scale_weight", None) is not None else t

    host.load_for_use([model.managed])  # comfy.model_management.load_models_gpu -> patches applied
    full = check(expected, stored)

    # low VRAM: ComfyUI keeps the stored weights and patches each layer's weight when it is cast
    patcher.unpatch_model(patcher.offload_device)
    patcher.load(patcher.load_device, lowvram_model_memory=1)
    gen = torch.Generator().manual_seed(1)
    lowvram = {}
    for key in kept:
        m = dit.get_submodule(key[:-7])
        assert m.weight.dtype == torch.float8_e4m3fn and m.weight_function, f"{key}: not a low-VRAM patch"
        bias = expected.get(key[:-7] + ".bias", (None, m.bias.float()))[1]
        x_in = torch.randn(3, m.weight.shape[1], generator=gen)
        want = torch.nn.functional.linear(x_in, expected[key][1], bias)
        unpatched = torch.nn.functional.linear(x_in, expected[key][0], bias)
        got = m(x_in)
        err, change = (got - want).abs().mean().item(), (want - unpatched).abs().mean().item()
        lowvram[key] = round(err / change, 4)
        assert err < 0.25 * change, f"{key} (low VRAM): error {err:.3g} vs LoRA change {change:.3g}"
    print(json.dumps({"full_load": full, "lowvram_forward": lowvram}))


if __name__ == "__main__":
    main(*sys.argv[1:7])
