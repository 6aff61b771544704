"""Peak host RAM of ``load_infinitetalk_model`` on a large random fp32 checkpoint.

Writes a base DiT file and an InfiniteTalk audio file in the real key layout (Wan/InfiniteTalk names,
real 14B audio sizes, a smaller width/depth so it fits a laptop; default ≈ 1.6 GB fp32 in total) into a
temporary folder, then loads them in a fresh process with the real loader and reports the peak resident
set (VmHWM) above the process's RSS just before loading, next to the size of one copy of the model in the
target dtype. ``--naive`` also measures "safetensors.load_file + load_state_dict" for comparison.

    python3 bench/load_peak_ram.py                      # CPU, bf16, dim 2048 x 4 layers
    python3 bench/load_peak_ram.py --layers 40 --dim 5120 --device cuda   # the real 14B (needs 75 GB disk)
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infinitetalk_core.model.config import AudioConfig, DiTConfig  # noqa: E402
from infinitetalk_core.model.dit import InfiniteTalkDiT  # noqa: E402
from infinitetalk_core.model.layouts import is_audio_key  # noqa: E402


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> int:
    """Stream random fp32 tensors into a safetensors file without holding them all; returns bytes."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4 * torch.Size(shape).numel()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            f.write((torch.randn(shape, generator=gen) * 0.02).numpy().tobytes())
    return path.stat().st_size


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: load, then print one JSON line of measurements."""
    from safetensors.torch import load_file

    from infinitetalk_core.model.loading import load_infinitetalk_model

    dtype = getattr(torch, args.dtype)
    folder = Path(args.child)
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    if args.naive:
        state = {**load_file(folder / "base.safetensors"), **load_file(folder / "infinitetalk.safetensors")}
        config = json.loads((folder / "config.json").read_text())
        model = InfiniteTalkDiT(
            DiTConfig(
                **{
                    **config,
                    "audio": AudioConfig(**config["audio"]),
                    "patch_size": tuple(config["patch_size"]),
                }
            ),
            dtype=dtype,
        )
        model.load_state_dict(state)
        del state
        model.to(args.device)
    else:
        model, _ = load_infinitetalk_model(
            folder / "base.safetensors", folder / "infinitetalk.safetensors", dtype=dtype, device=args.device
        )
    seconds = time.perf_counter() - start
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {
        "seconds": seconds,
        "rss_before_kib": rss_before,
        "peak_kib": _status_kib("VmHWM"),
        "model_bytes": model_bytes,
    }
    if args.device.startswith("cuda"):
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--ffn-dim", type=int, default=5504)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--naive", action="store_true", help="also measure load_file + load_state_dict")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    config = DiTConfig(dim=args.dim, ffn_dim=args.ffn_dim, num_layers=args.layers, num_heads=args.dim // 128)
    shapes = {k: tuple(v.shape) for k, v in InfiniteTalkDiT(config, device="meta").state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="load_peak_ram_") as tmp:
        folder = Path(tmp)
        size = write_random_safetensors(
            folder / "base.safetensors", {k: s for k, s in shapes.items() if not is_audio_key(k)}, 0
        )
        size += write_random_safetensors(
            folder / "infinitetalk.safetensors", {k: s for k, s in shapes.items() if is_audio_key(k)}, 1
        )
        cfg = {f: getattr(config, f) for f in ("dim", "ffn_dim", "num_layers", "num_heads")}
        cfg.update(patch_size=list(config.patch_size), audio=config.audio.__dict__)
        (folder / "config.json").write_text(json.dumps(cfg))
        print(
            f"files: {size / 2**30:.2f} GiB fp32 (dim {args.dim}, {args.layers} layers + InfiniteTalk audio)"
        )
        for naive in [False, True] if args.naive else [False]:
            cmd = [sys.executable, __file__, "--child", tmp, "--dtype", args.dtype, "--device", args.device]
            res = json.loads(
                subprocess.run(
                    cmd + (["--naive"] if naive else []), check=True, capture_output=True, text=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            extra = (res["peak_kib"] - res["rss_before_kib"]) * 1024
            name = "naive load_file+load_state_dict" if naive else "load_infinitetalk_model"
            line = (
                f"{name}: {res['seconds']:.1f} s; peak RSS above start {extra / 2**30:.2f} GiB "
                f"= {extra / res['model_bytes']:.2f} x one {args.dtype} copy "
                f"({res['model_bytes'] / 2**30:.2f} GiB); "
                f"absolute peak {res['peak_kib'] / 2**20:.2f} GiB"
            )
            if "cuda_peak_bytes" in res:
                line += f"; CUDA peak {res['cuda_peak_bytes'] / 2**30:.2f} GiB"
            print(line)


if __name__ == "__main__":
    main()
