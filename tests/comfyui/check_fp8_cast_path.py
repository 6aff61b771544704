"""In a ComfyUI process: fp8-kept layers of a partially loaded model get their weights through
``comfy.ops.cast_bias_weight`` (kept fp8, no dequantised copy) and still take the LoRA (run it with
COMFYUI_PYTHON).

    $COMFYUI_PYTHON tests/comfyui/check_fp8_cast_path.py COMFYUI_DIR REPO MODELS_DIR BASE LORA STRENGTH

Loads BASE (fp8 scaled, fp8_weights="keep") + tiny_it + LORA through the pack's Model Loader with ComfyHost,
then loads it with ComfyUI's ModelPatcher twice on the CPU: every layer offloaded (``lowvram_model_memory=1``:
ComfyUI sets ``comfy_cast_weights`` and turns the LoRA into ``weight_function`` / ``bias_function`` patches)
and partially (about half of the layers loaded, their LoRA patched into the stored weights). For every
fp8-kept Linear and both fp8 computes it checks, with a spy on ``comfy.ops.cast_bias_weight`` and on
``torch._scaled_mm``:

- the forward went through ``cast_bias_weight`` once, asking for the weight in float8_e4m3fn (float32 when the
  layer has low-VRAM LoRA patches) and getting the stored fp8 tensor itself back (same storage: no copy);
- compute "fp8": ``_scaled_mm`` ran for unpatched layers and the output is within the fp8-GEMM tolerance of
  F.linear with the dequantised file weight (+ the LoRA computed here from the files);
- compute "dequantize": the output equals that reference exactly (unpatched layers);
- low-VRAM LoRA layers: within bf16 rounding of the LoRA reference, far closer than the LoRA's own change.

Prints one JSON line of measured figures; exits non-zero on a mismatch.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

FP8_GEMM_TOL = 0.03  # e4m3 activation rounding: ~2.7 % relative on Gaussian inputs (bench/fp8_error.py)


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"_check_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


class CastSpy:
    """Wraps comfy.ops.cast_bias_weight: records (module, dtype asked, weight returned) per call."""

    def __init__(self, ops):
        self.ops, self.real, self.calls = ops, ops.cast_bias_weight, []

        def spy(s, *args, **kwargs):
            out = self.real(s, *args, **kwargs)
            self.calls.append((s, kwargs.get("dtype"), out[0], out[1]))
            return out

        ops.cast_bias_weight = spy


def main(comfy_dir: str, repo: str, models_dir: str, base: str, lora: str, strength: str) -> None:
    lora_check = _sibling("check_lora_patches")
    loaders, host = lora_check.comfy_loaders(comfy_dir, repo, models_dir)
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    import comfy.ops

    (model,) = loaders.InfiniteTalkModelLoader().load(base, "tiny_it.safetensors", "bf16", "keep", "sdpa",
                                                      lora_1=lora, strength_1=float(strength))
    dit, patcher = model.managed.module, model.managed.patcher
    fp8 = sys.modules[host.__module__.rsplit(".", 2)[0] + ".infinitetalk_core.model.fp8"]
    assert fp8.weight_cast_for_base(comfy.ops.CastWeightBiasOp) is not None, "ComfyHost installed no fp8 cast"
    state = load_file(str(Path(models_dir) / "diffusion_models" / base))
    lora_expected = lora_check.expected_tensors(Path(models_dir), base, lora, float(strength))
    layers = {n: m for n, m in dit.named_modules()
              if getattr(m, "weight", None) is not None and fp8.is_fp8(m.weight)}
    assert len(layers) >= 8, sorted(layers)

    def file_weight(name):
        return state[name + ".weight"].float() * state[name + ".scale_weight"].float()

    def reference(name, x):
        """(with the LoRA, without it): F.linear(x, W, b) from the files (dequantised fp8), in x's dtype."""
        w = lora_expected.get(name + ".weight", (None, file_weight(name)))[1]
        b = lora_expected.get(name + ".bias", (None, state[name + ".bias"].float()))[1]
        b = b.to(x.dtype)
        return F.linear(x, w.to(x.dtype), b), F.linear(x, file_weight(name).to(x.dtype), b)

    spy = CastSpy(comfy.ops)
    mm_calls = []
    real_mm = torch._scaled_mm

    def counting_mm(*args, **kwargs):
        mm_calls.append(args[1].shape)
        return real_mm(*args, **kwargs)

    torch._scaled_mm = counting_mm
    gen = torch.Generator().manual_seed(3)
    figures = {}
    model_bytes = sum(t.numel() * t.element_size() for t in dit.state_dict().values())
    for mode, budget in (("lowvram", 1), ("partial", model_bytes // 2)):
        patcher.unpatch_model(patcher.offload_device)
        patcher.load(patcher.load_device, lowvram_model_memory=budget)
        offloaded = {n for n, m in layers.items() if hasattr(m, "prev_comfy_cast_weights")}
        if mode == "lowvram":
            assert offloaded == set(layers), sorted(set(layers) - offloaded)
        else:
            assert offloaded and offloaded != set(layers), f"not partial: {len(offloaded)}/{len(layers)}"
        got_figures = {"offloaded_fp8_layers": len(offloaded), "fp8_layers": len(layers), "layers": {}}
        for name, m in sorted(layers.items()):
            assert m.comfy_cast_weights and m.weight.dtype == torch.float8_e4m3fn, name
            x = torch.randn(7, m.weight.shape[1], generator=gen).to(torch.bfloat16)
            want, unpatched = reference(name, x)
            patched_lowvram = bool(m.weight_function)
            row = {}
            for compute in ("fp8", "dequantize"):
                fp8.set_fp8_compute(m, compute)
                spy.calls.clear()
                mm_before = len(mm_calls)
                got = m(x)
                assert len(spy.calls) == 1, f"{name}: {len(spy.calls)} cast_bias_weight calls"
                s, asked, weight, bias = spy.calls[0]
                assert s is m
                if patched_lowvram:
                    assert asked == weight.dtype == torch.float32, (name, asked, weight.dtype)
                else:
                    assert asked == torch.float8_e4m3fn, (name, asked)
                    assert weight.dtype == torch.float8_e4m3fn, (name, weight.dtype)
                    assert weight.data_ptr() == m.weight.data_ptr(), f"{name}: the cast copied the weight"
                assert bias is not None and bias.dtype == x.dtype
                ran_fp8 = len(mm_calls) > mm_before
                err = rel(got, want)
                row[compute] = round(err, 5)
                lora_key = name + ".weight" in lora_expected
                if patched_lowvram:  # the LoRA on float32 raw values, dequantised: bf16 rounding only
                    change = rel(want, unpatched)
                    assert not ran_fp8 and err < 1e-2 and err < 0.05 * change, (name, compute, err, change)
                    row["lora_change"] = round(change, 5)
                elif lora_key:  # loaded regularly: ComfyUI patched the stored fp8 weight (stochastic round)
                    change = rel(want, unpatched)
                    assert ran_fp8 == (compute == "fp8") and err < 0.25 * change, (name, compute, err, change)
                    row["lora_change"] = round(change, 5)
                elif compute == "fp8":
                    assert ran_fp8 and err <= FP8_GEMM_TOL, (name, err)
                else:
                    assert not ran_fp8 and torch.equal(got, want), (name, err)
            got_figures["layers"][name] = row
        figures[mode] = got_figures
    torch._scaled_mm = real_mm
    comfy.ops.cast_bias_weight = spy.real
    print(json.dumps(figures))


if __name__ == "__main__":
    main(*sys.argv[1:7])
