"""Error of the fp8 compute path (torch._scaled_mm) against dequantize-then-bf16, real 14B block shapes.

    python bench/fp8_error.py [--tokens 128] [--seed 0]     # prints one markdown table (< 1 min on CPU)

Every distinct Linear weight shape of block 0 of Wan2.1-I2V-14B + InfiniteTalk (from the manifests in
../shared/manifests, or $INFINITETALK_SHARED/manifests) gets a random N(0, 1/in) weight, quantised to
float8_e4m3fn with one per-tensor scale as a scaled-fp8 file stores it, and a random N(0, 1) bf16 input of
``--tokens`` rows. Columns:

- rel err: ||y_fp8 - y_ref|| / ||y_ref|| (Frobenius), y_ref = F.linear(x, dequantize_fp8(W, s, bf16))
  (today's keep mode), for per-tensor and per-token activation scales. The weight is the same fp8 bytes
  in both, so this is the cost of rounding the activation to e4m3 (and of the bf16 output).
- rel err vs fp32: both against the exact fp32 product of the same bf16 input and dequantised weight.
- CPU time ratio: fp8 path (per tensor) / today's keep-mode call (dequantise + bf16 F.linear), best of 2.
  Informational only: CPU fp8 GEMM speed depends on the CPU's ISA, and the target is a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infinitetalk_core.model.fp8 import dequantize_fp8, fp8_linear  # noqa: E402

SHARED = Path(os.environ.get("INFINITETALK_SHARED", REPO.parent / "shared"))
MANIFESTS = ("wan21_i2v_14b_480p.json", "infinitetalk_single.json")


def block_shapes() -> dict[tuple[int, int], list[str]]:
    shapes: dict[tuple[int, int], list[str]] = {}
    for name in MANIFESTS:
        tensors = json.loads((SHARED / "manifests" / name).read_text())["tensors"]
        for key, shape in tensors.items():
            if key.startswith("blocks.0.") and key.endswith(".weight") and len(shape) == 2:
                shapes.setdefault(tuple(shape), []).append(key[len("blocks.0.") : -len(".weight")])
    return shapes


def best_time(fn, reps: int = 2) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    g = torch.Generator().manual_seed(args.seed)

    print(f"torch {torch.__version__}, {args.tokens} tokens, bf16 activations, per-tensor fp8 weight scale\n")
    print(
        "| Linear [out x in] | layers | rel err, tensor scale | rel err, token scale "
        "| rel err vs fp32: ref / tensor / token | CPU time fp8 / dequantize |"
    )
    print("|---|---|---|---|---|---|")
    for (out_f, in_f), names in block_shapes().items():
        w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
        scale = w.abs().max() / 448.0
        wq = (w / scale).to(torch.float8_e4m3fn)
        del w
        x = torch.randn(args.tokens, in_f, generator=g).to(torch.bfloat16)

        def keep_call():
            return F.linear(x, dequantize_fp8(wq, scale, torch.bfloat16))

        ref = keep_call()
        exact = x.float() @ dequantize_fp8(wq, scale, torch.float32).t()
        y = {m: fp8_linear(x, wq, scale, None, m) for m in ("tensor", "token")}
        ratio = best_time(lambda: fp8_linear(x, wq, scale, None, "tensor")) / best_time(keep_call)
        print(
            f"| {out_f} x {in_f} | {', '.join(names)} "
            f"| {rel(y['tensor'], ref):.4f} | {rel(y['token'], ref):.4f} "
            f"| {rel(ref, exact):.4f} / {rel(y['tensor'], exact):.4f} / {rel(y['token'], exact):.4f} "
            f"| {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
