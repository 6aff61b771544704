"""Step caches and presets: DiT work per chunk, the error it costs, and what that means on an H100.

    python bench/step_cache.py            # prints three markdown tables

1. Every cache method and threshold at 40 steps x 3 passes on the golden tiny DiT whose time embedding is
   low-passed (../shared/golden/teacache: its velocity field is smooth in t, so the caches see a skip
   pattern like a real model's; random tiny weights would never skip). Pass calls that ran the
   transformer blocks are counted by wrapping the model; the error is the relative L2 of the chunk's
   final latents against the uncached run.
2. The reference's own TeaCache runs stored in the fixture (its skip counts and its x0 error).
3. The same numbers as seconds per 480x832x81 chunk of the real 14B on one H100: blocks-running pass
   calls x the FLOP model of bench/dit_forward.py, at 63 % of the 989 TFLOP/s BF16 peak (LightX2V's
   pure-BF16 efficiency, ../shared/research/streaming_perf.md §3.3). Skipped calls cost only the patch
   embedding and the head (< 0.1 %), counted as free. Tiny weights cannot show how a cache affects a
   real video: the error column only compares methods on the same smooth model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infinitetalk_core.model.config import DiTConfig, detect_dit_config  # noqa: E402
from infinitetalk_core.model.dit import InfiniteTalkDiT  # noqa: E402
from infinitetalk_core.sampling.easycache import EasyCache  # noqa: E402
from infinitetalk_core.sampling.guidance import GuidanceConfig  # noqa: E402
from infinitetalk_core.sampling.sampler import sample_flow_euler  # noqa: E402
from infinitetalk_core.sampling.schedule import flow_timesteps  # noqa: E402
from infinitetalk_core.sampling.step_cache import StepCacheSettings  # noqa: E402
from infinitetalk_core.sampling.teacache import TeaCache  # noqa: E402
from infinitetalk_core.stream.model_fn import make_model_fn  # noqa: E402

SHARED = Path(os.environ.get("INFINITETALK_SHARED", REPO.parent / "shared"))
METHODS = [("none", 0.0)] + [("teacache", t) for t in (0.1, 0.2, 0.3, 0.5)] + \
          [("easycache", t) for t in (0.05, 0.1, 0.2, 0.4)]
H100_TFLOPS, EFFICIENCY = 989.0, 0.63
GRID_480 = (21, 30, 52)  # 480x832, 81 frames: latent frames x patch rows x patch columns
PRESETS = [("reference (flow_euler)", 40, 3), ("reference, text CFG 1", 40, 2), ("unipc", 20, 3),
           ("FusionX LoRA", 8, 2), ("lightx2v LoRA (distill), audio CFG 2", 4, 2),
           ("lightx2v LoRA (distill), audio CFG 1", 4, 1)]


class CountingDiT(torch.nn.Module):
    """Counts pass calls that ran the blocks and those answered from a cached residual."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.full, self.cached = inner, 0, 0

    def forward(self, x, *args, block_cache=None, **kwargs):
        if block_cache is not None and block_cache.reuse is not None:
            self.cached += x.shape[0]
        else:
            self.full += x.shape[0]
        extra = {} if block_cache is None else {"block_cache": block_cache}
        return self.inner(x, *args, **extra, **kwargs)

    def step_cache_indicator(self, *args, **kwargs):
        return self.inner.step_cache_indicator(*args, **kwargs)


def golden_model() -> tuple[InfiniteTalkDiT, dict]:
    golden = SHARED / "golden"
    tensors = load_file(str(golden / "teacache" / "teacache.safetensors"))
    state = load_file(str(golden / "dit" / "model_full.safetensors"))
    state["time_embedding.0.weight"] = tensors["weights.time_embedding.0.weight"]
    heads = json.loads((golden / "dit" / "model.json").read_text())["config"]["num_heads"]
    model = InfiniteTalkDiT(detect_dit_config({k: v.shape for k, v in state.items()}, num_heads=heads)).eval()
    model.load_state_dict(state)
    return model, tensors


def run_method(model, tensors, method: str, threshold: float, steps: int = 40) -> tuple[int, int, torch.Tensor]:
    """(pass calls with blocks, pass calls skipped, final latents) of one 40 x 3 chunk."""
    counting = CountingDiT(model)
    cache = StepCacheSettings(method, threshold).new_state(steps)
    model_fn = make_model_fn(counting, tensors["y"][0], tensors["clip_fea"], tensors["audio"], tensors["context"],
                             tensors["context_null"], tensors["ref_target_masks"], True,
                             cache if isinstance(cache, TeaCache) else None)
    if isinstance(cache, EasyCache):
        model_fn = cache.wrap(model_fn)
    noise = tensors["s40_sh7_480_th0p2.x_in"][0]
    with torch.no_grad():
        x0 = sample_flow_euler(model_fn, noise, flow_timesteps(steps, 7.0), tensors["context_latent"],
                               GuidanceConfig(5.0, 4.0))
    skipped = counting.cached + (3 * steps - counting.full - counting.cached)  # EasyCache skips whole calls
    return counting.full, skipped, x0


def h100_seconds(full_calls: int) -> float:
    flops = _flops_module().forward_flops(DiTConfig(), GRID_480)["total"]
    return full_calls * flops / (H100_TFLOPS * 1e12 * EFFICIENCY)


def _flops_module():
    spec = importlib.util.spec_from_file_location("bench_dit_forward", REPO / "bench" / "dit_forward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def method_table(model, tensors) -> list[str]:
    rows = ["| method | threshold | pass calls with blocks | skipped | speed-up | rel. L2 of x0 vs uncached |"
            " est. H100 s/chunk (14B, 480p) |", "|---|---|---|---|---|---|---|"]
    reference = None
    for method, threshold in METHODS:
        full, skipped, x0 = run_method(model, tensors, method, threshold)
        reference = x0 if reference is None else reference
        rows.append(f"| {method} | {threshold or '-'} | {full} | {skipped} | {120 / full:.2f}x | "
                    f"{rel_l2(x0, reference):.2e} | {h100_seconds(full):.0f} |")
    return rows


def fixture_table(tensors) -> list[str]:
    meta = json.loads((SHARED / "golden" / "teacache" / "teacache.json").read_text())
    rows = ["| reference case | calls | computed | skipped | rel. L2 of x0 vs uncached |", "|---|---|---|---|---|"]
    for name, case in meta["cases"].items():
        decisions = case["calls"]["computed"]
        computed = sum(decisions)
        error = rel_l2(tensors[f"{name}.x0"], tensors[f"{name}.x0_nocache"])
        rows.append(f"| {name} | {len(decisions)} | {computed} | {len(decisions) - computed} | {error:.2e} |")
    return rows


def preset_table() -> list[str]:
    rows = ["| preset | steps x passes | DiT forwards per chunk | est. H100 s/chunk (14B, 480p, BF16) |",
            "|---|---|---|---|"]
    for name, steps, passes in PRESETS:
        rows.append(f"| {name} | {steps} x {passes} | {steps * passes} | {h100_seconds(steps * passes):.0f} |")
    return rows


def main() -> None:
    torch.manual_seed(0)
    model, tensors = golden_model()
    print("## Step caches at 40 x 3 (golden tiny DiT with a smooth time embedding; CPU)\n")
    print("\n".join(method_table(model, tensors)))
    print("\n## The reference's own TeaCache runs (fixture)\n")
    print("\n".join(fixture_table(tensors)))
    print("\n## Presets\n")
    print("\n".join(preset_table()))


if __name__ == "__main__":
    main()
