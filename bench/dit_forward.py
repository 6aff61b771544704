"""Benchmark one InfiniteTalk DiT forward: seconds, achieved TFLOP/s and peak memory.

Usage (from the repository root):

    python3 bench/dit_forward.py                          # tiny model on CPU, fp32, sdpa
    python3 bench/dit_forward.py --preset 14b             # 14B + audio, 480×832, 81 frames, bf16, CUDA
    python3 bench/dit_forward.py --preset 14b --attention flash --speakers 2 --batch 3
    python3 bench/dit_forward.py --preset tiny --height 256 --width 256 --frames 33 --repeats 5
    python3 bench/dit_forward.py --count-bytes            # non-matmul bytes per token·dim per block (meta)
    COMFYUI_DIR=~/ComfyUI python3 bench/dit_forward.py --vs-native --dim 1024 --layers 6 --frames 21 \
        --threads 2 --dtype bfloat16 --compile blocks     # ours vs ComfyUI's WanModel (bench/native_forward.py)

The 14b preset builds the full config with random weights directly on the GPU (no 14B allocation on the
CPU) and also times a plain bf16 matmul in the same run, printing the forward's share of that ceiling.
Seconds are the median of ``--repeats`` forwards after ``--warmup`` untimed ones. FLOPs are matmul FLOPs
only (2 per multiply-add), the same model as ../shared/research/flops_calc.py, generalised to any config,
batch and speaker count. Peak memory is CUDA max-allocated on a GPU, peak RSS of the process on CPU.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/byte_counter.py
from infinitetalk_core.model.attention import BACKENDS, resolve_backend  # noqa: E402
from infinitetalk_core.model.config import AudioConfig, DiTConfig  # noqa: E402
from infinitetalk_core.model.compile import compile_blocks  # noqa: E402
from infinitetalk_core.model.dit import InfiniteTalkDiT  # noqa: E402
from infinitetalk_core.model.fp8 import assign_fp8_weight, fp8_operations  # noqa: E402

CLIP_TOKENS = 257
TINY = DiTConfig(
    dim=128,
    ffn_dim=256,
    num_layers=2,
    num_heads=4,
    text_dim=64,
    clip_dim=64,
    audio=AudioConfig(feature_dim=2 * 32, intermediate_dim=64, output_dim=48, context_tokens=8),
)
PRESETS = {  # name -> (config, height, width, frames, dtype, device)
    "tiny": (TINY, 128, 128, 17, "float32", "cpu"),
    "14b": (DiTConfig(), 480, 832, 81, "bfloat16", "cuda"),
}


def forward_flops(
    cfg: DiTConfig, grid: tuple[int, int, int], batch: int = 1, speakers: int = 1
) -> dict[str, float]:
    """Matmul FLOPs of one forward of ``batch`` samples on a (T, h/2, w/2) token grid, by part."""
    frames, n = grid[0], grid[0] * grid[1] * grid[2]
    d, layers, ctx = cfg.dim, cfg.num_layers, cfg.text_len + CLIP_TOKENS
    per_token = 4 * d * d + 2 * d * d + 2 * d * cfg.ffn_dim  # self qkvo, cross q/o, ffn
    parts = {
        "self_attn": 4 * n * n * d * layers,  # QKᵀ + AV
        "cross": (4 * n * ctx * d + 2 * 2 * ctx * d * d) * layers,  # attention + k/v of text and image
        "audio": 0.0,
        "routing": 0.0,
    }
    if cfg.audio is not None:
        per_token += 2 * d * d  # audio q_linear + proj
        tokens = cfg.audio.context_tokens * speakers
        parts["audio"] = (4 * n * tokens * d + 2 * frames * tokens * cfg.audio.output_dim * 2 * d) * layers
        if speakers == 2:  # x_ref_attn_map: one attention over the first frame's keys (V padded to D)
            parts["routing"] = 4 * n * (grid[1] * grid[2]) * d * layers
    parts["linear"] = 2 * n * per_token * layers
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def random_inputs(
    cfg: DiTConfig, height: int, width: int, frames: int, batch: int, speakers: int, device, dtype
) -> dict:
    """Random model inputs for ``batch`` samples of ``frames`` video frames at height×width pixels."""
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    rand = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
    inputs = dict(
        x=rand(batch, 16, t, h, w),
        t=torch.full((batch,), 500.0, device=device),
        context=[rand(200, cfg.text_dim) for _ in range(batch)],
        clip_fea=rand(1, CLIP_TOKENS, cfg.clip_dim),
        y=rand(1, 20, t, h, w),
        ref_target_masks=None,
        audio=None,
    )
    if cfg.audio is not None:
        layers = next(
            n for n in (12, 2, 1) if cfg.audio.feature_dim % n == 0
        )  # 12 wav2vec layers when it fits
        shape = (speakers, frames, cfg.audio.window, layers, cfg.audio.feature_dim // layers)
        inputs["audio"] = [rand(*shape) for _ in range(batch)]
        masks = torch.zeros(3, h, w, device=device)
        masks[0, :, : w // 2], masks[1, :, w // 2 :] = 1, 1
        inputs["ref_target_masks"] = masks
    return inputs


def time_call(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int = 8192) -> float:
    """TFLOP/s of a plain size³ matmul in ``dtype`` on ``device``."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    seconds = time_call(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * size**3 / seconds / 1e12


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", help="default: cpu for tiny, cuda for 14b")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--attention", default="auto", choices=list(BACKENDS))
    for name in ("--height", "--width", "--frames"):
        p.add_argument(name, type=int, help="pixels / video frames (default: the preset's)")
    p.add_argument("--batch", type=int, default=1, help="samples per forward (3 = batched guidance passes)")
    p.add_argument("--speakers", type=int, default=1, choices=[1, 2])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--fp8", choices=["off", "fp8", "dequantize"], default="off",
                   help="store every Linear weight as scaled fp8 (e4m3, per-tensor scale) and multiply with "
                        "torch._scaled_mm (fp8) or dequantize per call (dequantize)")
    p.add_argument("--compile", choices=["off", "blocks"], default="off",
                   help="torch.compile every block (regional); the warm-up runs include the compile")
    p.add_argument("--memory-cap-gib", type=float,
                   help="cap this process's CUDA memory (torch.cuda.set_per_process_memory_fraction)")
    p.add_argument("--estimate-h100", action="store_true",
                   help="print the model-based H100 estimate of a 4 x 1 chunk (FLOP model + the bytes counter)")
    p.add_argument("--count-bytes", action="store_true",
                   help="count the non-matmul bytes of one 14B block at 480x832x81 in bf16 (bench/byte_counter.py); "
                        "with COMFYUI_DIR also ComfyUI's native WanModel")
    p.add_argument("--vs-native", action="store_true",
                   help="CPU forward time ours / ComfyUI's native WanModel on the same weights and inputs "
                        "(needs COMFYUI_DIR; audio-free config from --dim/--layers/--heads; --compile blocks "
                        "adds both models with compiled blocks); bench/native_forward.py")
    p.add_argument("--dim", type=int, default=1024, help="--vs-native: model width (ffn 4x)")
    p.add_argument("--layers", type=int, default=6, help="--vs-native: blocks")
    p.add_argument("--heads", type=int, default=8, help="--vs-native: attention heads")
    return p.parse_args(argv)


def to_scaled_fp8(model: torch.nn.Module) -> int:
    """Replace every fp8-capable Linear's weight by e4m3 bytes + a per-tensor scale, layer by layer."""
    count = 0
    for module in model.modules():
        if hasattr(module, "scale_weight") and module.weight.dim() == 2:
            w = module.weight.data
            scale = (w.abs().max().float() / 448.0).clamp(min=1e-12)
            assign_fp8_weight(module, (w.float() / scale).to(torch.float8_e4m3fn), scale)
            count += 1
    return count


# H100 SXM figures behind the estimate (../shared/research/streaming_perf.md §3 and its anchors)
H100 = {"fp8_tflops": 1979.0, "bf16_tflops": 989.0, "hbm_tbps": 3.35}
EFFICIENCY = {"gemm": 0.60, "attention_tflops": 1000.0, "bandwidth": 0.80}  # FA3-FP8 / Sage2 ~1.2 PF/s


def estimate_h100(steps: int = 4, passes: int = 1, fp8: bool = True) -> list[tuple[str, str]]:
    """Model-based seconds of one 480×832×81 chunk's DiT work on an H100: linear layers at the fp8 (or
    bf16) peak × 0.6, attention at 1.0 PFLOP/s (8-bit kernels), non-matmul bytes from our own counter at
    80 % of HBM bandwidth. VAE, text and CLIP encoders are not counted."""
    import byte_counter

    cfg, grid = DiTConfig(), (21, 30, 52)
    flops = forward_flops(cfg, grid)
    peak = H100["fp8_tflops" if fp8 else "bf16_tflops"] * 1e12 * EFFICIENCY["gemm"]
    attention = flops["total"] - flops["linear"]
    bytes_per, _ = byte_counter.ours(cfg, random_inputs, 480, 832, 81)
    elementwise = bytes_per * grid[0] * grid[1] * grid[2] * cfg.dim * cfg.num_layers
    parts = {"linear": flops["linear"] / peak, "attention": attention / (EFFICIENCY["attention_tflops"] * 1e12),
             "elementwise": elementwise / (H100["hbm_tbps"] * 1e12 * EFFICIENCY["bandwidth"])}
    forward = sum(parts.values())
    rows = [(f"{k} s per forward", f"{v:.3f}") for k, v in parts.items()]
    return rows + [("s per forward", f"{forward:.2f}"),
                   (f"est. s per chunk, {steps} x {passes}, {'fp8' if fp8 else 'bf16'} GEMMs", f"{forward * steps * passes:.1f}")]


def print_byte_counts() -> None:
    """Markdown table: non-matmul bytes per token·dim per block, ours vs native, with the op breakdown."""
    import byte_counter

    cfg, height, width, frames = DiTConfig(), 480, 832, 81
    mine = byte_counter.ours(cfg, random_inputs, height, width, frames)
    hosted = byte_counter.ours_with_host_rope(cfg, random_inputs, height, width, frames)
    plain = byte_counter.ours_with_host_rope(dataclasses.replace(cfg, audio=None), random_inputs, height, width, frames)
    theirs = byte_counter.native(cfg, height, width, frames)
    print("| model (bf16, 14B width, 480×832×81, eager) | bytes per token·dim per block | largest ops |")
    print("|---|---|---|")
    rows = (("ours (InfiniteTalkDiT, audio included)", mine),
            ("ours inside ComfyUI (comfy-kitchen RoPE)", hosted),
            ("ours inside ComfyUI, no audio layers (native's config)", plain),
            ("ComfyUI native WanModel", theirs))
    for name, result in rows:
        if isinstance(result, str):
            print(f"| {name} | – | {result} |")
            continue
        total, ops = result
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(ops.items())[:5])
        print(f"| {name} | {total:.1f} | {top} |")


def vs_native(a: argparse.Namespace) -> None:
    """--vs-native: bench/native_forward.py's comparison, printed as markdown."""
    import os

    import native_forward

    if not os.environ.get("COMFYUI_DIR"):
        sys.exit("--vs-native needs COMFYUI_DIR set to a ComfyUI checkout (its comfy/ldm/wan/model.py is the "
                 "native WanModel compared against); it is unset.")
    if a.preset != "tiny" or (a.device or "cpu") != "cpu":
        sys.exit("--vs-native runs on the CPU with its own config (--dim/--layers/--heads); drop --preset/--device.")
    cfg = native_forward.bench_config(a.dim, a.layers, a.heads)
    result = native_forward.compare(
        cfg, a.height or 128, a.width or 128, a.frames or 21, getattr(torch, a.dtype or "float32"), a.threads,
        a.warmup, a.repeats, compile=a.compile == "blocks")
    print(native_forward.markdown(result))


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.vs_native:
        return vs_native(a)
    if a.count_bytes:
        return print_byte_counts()
    if a.estimate_h100:
        rows = estimate_h100(4, 1, True) + estimate_h100(4, 1, False)[-1:] + estimate_h100(40, 3, True)[-1:]
        print("| quantity (480×832×81, H100 model) | value |\n|---|---|")
        return print("\n".join(f"| {k} | {v} |" for k, v in rows))
    cfg, height, width, frames, dtype_name, device_name = PRESETS[a.preset]
    height, width, frames = a.height or height, a.width or width, a.frames or frames
    device, dtype = torch.device(a.device or device_name), getattr(torch, a.dtype or dtype_name)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if a.memory_cap_gib and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.memory_cap_gib * 2**30 / total), device)
    ops = torch.nn if a.fp8 == "off" else fp8_operations(torch.nn, compute=a.fp8)
    model = InfiniteTalkDiT(cfg, operations=ops, device=device, dtype=dtype, attention_backend=a.attention).eval()
    if a.fp8 != "off":
        to_scaled_fp8(model)
    compile_blocks(model, a.compile)
    inp = random_inputs(cfg, height, width, frames, a.batch, a.speakers, device, dtype)
    names = ("x", "t", "context", "clip_fea", "y", "audio", "ref_target_masks")

    def forward():
        with torch.inference_mode():
            return model(*(inp[n] for n in names))

    seconds = time_call(forward, device, a.warmup, a.repeats)
    peak = peak_memory_gib(device)
    grid = ((frames - 1) // 4 + 1, height // 16, width // 16)
    tflops = forward_flops(cfg, grid, a.batch, a.speakers)["total"] / seconds / 1e12
    on_gpu = device.type == "cuda"
    rows = [
        ("preset", a.preset),
        (
            "device",
            torch.cuda.get_device_name(device) if on_gpu else f"cpu, {torch.get_num_threads()} threads",
        ),
        ("dtype", dtype_name := str(dtype).removeprefix("torch.")),
        ("fp8 weights", a.fp8),
        ("compile", a.compile),
        ("attention", f"{a.attention} -> {resolve_backend(a.attention, device, dtype)}"),
        ("parameters", f"{sum(q.numel() for q in model.parameters()) / 1e9:.3f} B"),
        ("video", f"{frames}×{height}×{width}, batch {a.batch}, {a.speakers} speaker(s)"),
        ("tokens per sample", f"{grid[0] * grid[1] * grid[2]}"),
        ("forward seconds (median)", f"{seconds:.4f}"),
        ("matmul TFLOP per forward", f"{tflops * seconds:.4f}"),
        ("achieved TFLOP/s", f"{tflops:.4f}"),
        ("peak memory GiB" + (" (CUDA max allocated)" if on_gpu else " (process RSS)"), f"{peak:.2f}"),
    ]
    if on_gpu and dtype != torch.float32:
        ceiling = matmul_ceiling(device, dtype)
        rows += [
            (f"{dtype_name} matmul ceiling TFLOP/s", f"{ceiling:.1f}"),
            ("share of ceiling", f"{tflops / ceiling:.1%}"),
        ]
    print("| quantity | value |\n|---|---|")
    print("\n".join(f"| {k} | {v} |" for k, v in rows))


if __name__ == "__main__":
    main()
