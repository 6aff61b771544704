"""Error of fp8 compute schemes (torch._scaled_mm) against dequantize-then-bf16, real 14B block shapes.

    python bench/fp8_error.py [--tokens 128] [--seed 0] [--activations gauss|outliers|both]
                                                  # prints markdown tables (4-6 min on a 2-core CPU)

Every distinct Linear weight shape of block 0 of Wan2.1-I2V-14B + InfiniteTalk (from the manifests in
../shared/manifests, or $INFINITETALK_SHARED/manifests) gets a random N(0, 1/in) weight, quantised to
float8_e4m3fn with one per-tensor scale as a scaled-fp8 file stores it, and a bf16 input of ``--tokens``
rows: N(0, 1) (``gauss``), or N(0, 1) with every 64th channel x20 and every 32nd token x8 (``outliers``,
the channel / token outliers that per-token scales and smoothing are meant for). The reference is
``y_ref = F.linear(x, dequantize_fp8(W, s, bf16))`` (the layer's dequantize path; the fp8 bytes are the
same in every row, so only what a scheme does to the activation, or to a re-quantised weight, counts).

Schemes (rows):

- ``x rounded, bf16 GEMM``: the activation rounded to e4m3 (per-token scale) and back, then the bf16
  GEMM: the error of the rounding alone, without any fp8 GEMM.
- ``W8A8 tensor`` / ``W8A8 token``: ``fp8.fp8_linear`` (what ScaledFp8Linear runs): the activation in
  e4m3 with one amax/448 scale per tensor / per row.
- ``W8A8 token, e5m2 x``: the activation in e5m2 (2 mantissa bits; more range, less precision).
- ``W8A8 token + smooth a=0.5``: SmoothQuant-style per-input-channel factors s_j = max|x_j|^0.5 /
  max|W_j|^0.5 calibrated on this very input (optimistic), x / s in e4m3, W * s re-quantised to e4m3.
- ``... smooth a=0.5, 2^k``: the factors rounded to powers of two, so the weight's fp8 bytes only change
  exponent (exact, bar the few that leave e4m3's normal range) and no weight re-rounding is added.
- ``W8A8 token + Hadamard 256``: x and W rotated by a block-diagonal orthonormal Hadamard (256), the
  rotated weight re-quantised to e4m3 (QuaRot-style).
- ``2-term x (hi+lo)``: x = hi + lo, hi = e4m3(x), lo = e4m3(x - hi), both per-token; one _scaled_mm over
  the 2M stacked rows (row-wise scales), the halves summed in fp32.
- ``2-term x on top f tokens``: the lo rows only for the fraction f of tokens with the largest residual.

Columns: rel err = ||y - y_ref|| / ||y_ref|| (Frobenius); worst token = the largest of the same per row;
vs fp32 = against the exact fp32 product of the
same bf16 input and dequantised weight (the reference itself is ~0.25 % off it: bf16 output rounding);
GEMM cost = tensor-core work relative to the bf16 GEMM on fp8-capable GPUs (sm 8.9 / 9.0: fp8 dense
throughput is 2x bf16), analytic, not measured; the dequantize path also reads and writes the weight once
more per call; CPU time = measured scheme / dequantize path, best of 2, informational only (CPU fp8 GEMM
speed depends on the CPU's ISA; the target is a CUDA GPU).
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

from infinitetalk_core.model.fp8 import (  # noqa: E402
    E4M3_MAX,
    dequantize_fp8,
    fp8_linear,
    quantize_activation,
)

SHARED = Path(os.environ.get("INFINITETALK_SHARED", REPO.parent / "shared"))
MANIFESTS = ("wan21_i2v_14b_480p.json", "infinitetalk_single.json")
E5M2_MAX = 57344.0
HADAMARD_BLOCK = 256


def block_shapes() -> dict[tuple[int, int], list[str]]:
    shapes: dict[tuple[int, int], list[str]] = {}
    for name in MANIFESTS:
        tensors = json.loads((SHARED / "manifests" / name).read_text())["tensors"]
        for key, shape in tensors.items():
            if key.startswith("blocks.0.") and key.endswith(".weight") and len(shape) == 2:
                shapes.setdefault(tuple(shape), []).append(key[len("blocks.0.") : -len(".weight")])
    return shapes


def timed(fn, reps: int = 2) -> tuple[float, torch.Tensor]:
    """(best wall time of ``reps`` calls, the last result)."""
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def worst_row(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest per-token (row) relative error: a scheme can meet the Frobenius figure on average
    while some tokens stay worse (the partial 2-term split)."""
    return ((a.float() - b.float()).norm(dim=-1) / b.float().norm(dim=-1)).max().item()


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float weight -> (e4m3 bytes, per-tensor fp32 scale), as a scaled-fp8 file stores it."""
    scale = w.abs().max().float() / E4M3_MAX
    return (w.float() / scale).to(torch.float8_e4m3fn), scale


def row_gemm(xq: torch.Tensor, scale_rows: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor):
    """_scaled_mm with one scale per activation row ([M, 1]) and the per-tensor weight scale; bf16 out."""
    scale_b = w_scale.reshape(()).expand(1, wq.shape[0]).contiguous()
    return torch._scaled_mm(xq, wq.t(), scale_a=scale_rows, scale_b=scale_b, out_dtype=torch.bfloat16)


def quantize_e5m2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / E5M2_MAX).clamp_(min=1e-12)
    return (x.float() / scale).to(torch.float8_e5m2), scale


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def rotate(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """t [rows, K] @ blockdiag(h, ..., h), K a multiple of h's size; float32."""
    rows, k = t.shape
    return (t.float().reshape(rows, k // h.shape[0], h.shape[0]) @ h).reshape(rows, k)


def two_term(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, fraction: float = 1.0) -> torch.Tensor:
    """hi + lo split of the activation, lo for the ``fraction`` of rows with the largest residual."""
    hi_q, hi_s = quantize_activation(x, per_token=True)
    lo = x.float() - hi_q.float() * hi_s
    rows = torch.arange(x.shape[0])
    if fraction < 1.0:
        rows = lo.norm(dim=1).topk(max(1, round(fraction * x.shape[0]))).indices
    lo_q, lo_s = quantize_activation(lo[rows], per_token=True)
    y = row_gemm(torch.cat([hi_q, lo_q]), torch.cat([hi_s, lo_s]), wq, w_scale).float()
    out = y[: x.shape[0]]
    out[rows] += y[x.shape[0] :]
    return out.to(x.dtype)


def make_input(kind: str, tokens: int, in_f: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(tokens, in_f, generator=g)
    if kind == "outliers":
        x[:, ::64] *= 20.0
        x[::32] *= 8.0
    return x.to(torch.bfloat16)


def schemes(x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, w_ref: torch.Tensor, rotated_w):
    """name -> (analytic GEMM cost vs bf16, a zero-argument function computing y). ``w_ref``: fp32 W;
    ``rotated_w``: (Hadamard, rotated weight's e4m3 bytes, its scale), or None where K is not a multiple."""
    out: dict[str, tuple[str, object]] = {}

    def rounded():
        q, s = quantize_activation(x, per_token=True)
        return F.linear((q.float() * s).to(x.dtype), w_ref.to(x.dtype))

    out["x rounded, bf16 GEMM"] = ("1", rounded)
    out["W8A8 tensor"] = ("0.5", lambda: fp8_linear(x, wq, scale, None, "tensor"))
    out["W8A8 token"] = ("0.5", lambda: fp8_linear(x, wq, scale, None, "token"))

    def e5m2():
        q, s = quantize_e5m2(x)
        return row_gemm(q, s, wq, scale)

    out["W8A8 token, e5m2 x"] = ("0.5", e5m2)

    # smoothing, calibrated on x itself; the weight change is a one-time re-quantisation at load
    smooth = (x.float().abs().amax(0).clamp(min=1e-5) ** 0.5 / w_ref.abs().amax(0).clamp(min=1e-5) ** 0.5)
    ws_q, ws_scale = quantize_weight(w_ref * smooth)
    xs = (x.float() / smooth).to(x.dtype)

    def smoothed():
        q, s = quantize_activation(xs, per_token=True)
        return row_gemm(q, s, ws_q, ws_scale)

    out["W8A8 token + smooth a=0.5"] = ("0.5", smoothed)

    # the same with power-of-two factors: W * 2^k keeps its fp8 bytes exact (only exponents move), so the
    # weight is not re-rounded; what is left is the activation's rounding
    pow2 = torch.exp2(torch.log2(smooth).round())
    raw = wq.float() * pow2
    shift = torch.exp2(torch.ceil(torch.log2(raw.abs().max() / E4M3_MAX)))
    wp_q, wp_scale = (raw / shift).to(torch.float8_e4m3fn), scale * shift
    xp = (x.float() / pow2).to(x.dtype)

    def smoothed_pow2():
        q, s = quantize_activation(xp, per_token=True)
        return row_gemm(q, s, wp_q, wp_scale)

    out["W8A8 token + smooth a=0.5, 2^k"] = ("0.5", smoothed_pow2)
    if rotated_w is not None:
        h, wr_q, wr_scale = rotated_w

        def rotated():  # the activation's rotation runs per call: an extra [M, K] x 256 product
            q, s = quantize_activation(rotate(x, h).to(x.dtype), per_token=True)
            return row_gemm(q, s, wr_q, wr_scale)

        out[f"W8A8 token + Hadamard {h.shape[0]}"] = ("0.5 + rotation", rotated)
    out["2-term x (hi+lo)"] = ("1.0", lambda: two_term(x, wq, scale))
    for f in (0.25, 0.5):
        out[f"2-term x on top {f:g} tokens"] = (f"{0.5 * (1 + f):.3g}", lambda f=f: two_term(x, wq, scale, f))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--activations", choices=("gauss", "outliers", "both"), default="both")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    g = torch.Generator().manual_seed(args.seed)
    kinds = ("gauss", "outliers") if args.activations == "both" else (args.activations,)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.tokens} tokens, bf16 "
          "activations, e4m3 weights with a per-tensor scale; reference = dequantize-then-bf16 F.linear\n")
    print("| Linear [out x in] (layers) | x | scheme | rel err | worst token | vs fp32 | GEMM cost vs bf16 "
          "| CPU time / dequantize |")
    print("|---|---|---|---|---|---|---|---|")
    worst: dict[tuple[str, str], tuple[float, float]] = {}  # (kind, scheme) -> (rel err, worst token)
    for (out_f, in_f), names in block_shapes().items():
        w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
        wq, scale = quantize_weight(w)
        del w
        w_ref = dequantize_fp8(wq, scale, torch.float32)
        rotated_w = None
        if in_f % HADAMARD_BLOCK == 0:  # a one-time re-quantisation of the rotated weight (at load)
            h = hadamard(HADAMARD_BLOCK)
            rotated_w = (h, *quantize_weight(rotate(w_ref, h)))
        which = ", ".join(names) if len(names) <= 2 else f"{len(names)} layers"
        label = f"{out_f} x {in_f} ({which})"
        for kind in kinds:
            x = make_input(kind, args.tokens, in_f, g)

            def keep_call():
                return F.linear(x, dequantize_fp8(wq, scale, torch.bfloat16))

            t_ref, ref = timed(keep_call)
            exact = x.float() @ w_ref.t()
            print(f"| {label} | {kind} | dequantize (reference) | 0 | 0 | {rel(ref, exact):.4f} "
                  "| 1 + dequant | 1.00 |")
            for name, (cost, fn) in schemes(x, wq, scale, w_ref, rotated_w).items():
                t, y = timed(fn)
                err, token_err = rel(y, ref), worst_row(y, ref)
                before = worst.get((kind, name), (0.0, 0.0))
                worst[(kind, name)] = (max(before[0], err), max(before[1], token_err))
                print(f"| {label} | {kind} | {name} | {err:.4f} | {token_err:.4f} | {rel(y, exact):.4f} "
                      f"| {cost} | {t / t_ref:.2f} |")
    print("\n| x | scheme | worst rel err over the shapes | worst token | rel err <= 2 % "
          "| every token <= 2 % |")
    print("|---|---|---|---|---|---|")
    for (kind, name), (err, token_err) in worst.items():
        print(f"| {kind} | {name} | {err:.4f} | {token_err:.4f} | {'yes' if err <= 0.02 else 'no'} "
              f"| {'yes' if token_err <= 0.02 else 'no'} |")


if __name__ == "__main__":
    main()
