"""Colour-matching speed: milliseconds per frame for each method.

    python bench/color_match.py                      # CPU, 16 frames of 480x832, 3 repeats
    python bench/color_match.py --device cuda --frames 81 --repeats 10

Frames are random-ish smooth images in [0, 1] (a gradient plus noise) matched against one reference
frame at full strength, in the ComfyUI IMAGE layout [N, H, W, 3] float32. Reports, per frame, the
median wall time of the whole batch and (on CPU) the process CPU time, which stays meaningful on a
machine shared with other jobs (with --threads 1 it approximates an idle single core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infinitetalk_core.color import COLOR_METHODS, match_colors  # noqa: E402


def make_frames(n: int, h: int, w: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, w).view(1, 1, w, 1) * torch.linspace(0.3, 1, h).view(1, h, 1, 1)
    tint = torch.rand(n, 1, 1, 3, generator=g)
    frames = 0.6 * ramp + 0.3 * tint + 0.1 * torch.rand(n, h, w, 3, generator=g)
    return frames.clamp(0, 1).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_method(method: str, frames: torch.Tensor, ref: torch.Tensor, repeats: int, device: str
                ) -> tuple[float, float]:
    """-> (median wall ms per frame, median process CPU ms per frame)."""
    match_colors(frames, ref, method)  # warm-up (allocations, kernels)
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        match_colors(frames, ref, method)
        sync(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    n = frames.shape[0]
    return statistics.median(walls) / n * 1000.0, statistics.median(cpus) / n * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = make_frames(args.frames, args.height, args.width, args.device, seed=0)
    ref = make_frames(1, args.height, args.width, args.device, seed=1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.frames} "
          f"size={args.height}x{args.width} torch={torch.__version__} load_avg_1min={load:.1f}")
    for method in COLOR_METHODS:
        wall, cpu = time_method(method, frames, ref, args.repeats, args.device)
        print(f"{method:>10}: {wall:8.2f} ms/frame wall, {cpu:8.2f} ms/frame CPU time")


if __name__ == "__main__":
    main()
