"""Benchmark: wav2vec2 feature extraction speed and peak memory versus audio duration.

Real-size chinese-wav2vec2-base architecture (bundled config) with random weights on a synthetic,
speech-like track. Each duration runs in a fresh subprocess so its peak RSS is its own.

    python3 bench/audio_encode.py                       # CPU, 1 and 10 minutes
    python3 bench/audio_encode.py --minutes 1 10 60 --device cuda
    python3 bench/audio_encode.py --segment-check 60    # stitched segments vs one pass, max abs error

Reports per duration: seconds of audio per second of compute (prepare = resample/loudness excluded:
the track is generated at 16 kHz; loudness is timed separately), peak RSS (MiB) and, on CUDA, peak
allocated device memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from infinitetalk_core.audio import encode_audio_features, normalize_loudness, wav2vec2_from_config


def synthetic_speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """[n] float32: voiced harmonics with a syllable-rate envelope, noise bursts and pauses."""
    rng = np.random.default_rng(seed)
    out = np.empty(int(seconds * rate), dtype=np.float32)
    block = rate * 10
    for a in range(0, out.shape[0], block):
        t = np.arange(a, min(out.shape[0], a + block)) / rate
        f0 = 140 + 30 * np.sin(2 * np.pi * 0.3 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) * (np.sin(2 * np.pi * 0.13 * t) > -0.6)
        out[a:a + t.shape[0]] = 0.1 * voiced * envelope + 0.01 * rng.standard_normal(t.shape[0])
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(minutes: float, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    encoder = wav2vec2_from_config(device=device)
    wave = synthetic_speech(minutes * 60)
    t0 = time.perf_counter()
    wave = normalize_loudness(wave, 16000)
    t_loud = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    features = encode_audio_features(encoder, wave)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {
        "minutes": minutes, "device": device, "threads": threads, "frames": features.shape[0],
        "encode_s": round(seconds, 2), "loudness_s": round(t_loud, 3),
        "audio_s_per_compute_s": round(minutes * 60 / seconds, 2),
        "features_mib": round(features.numel() * features.element_size() / 2**20, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if device.startswith("cuda"):
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def segment_check(seconds: float, device: str, threads: int) -> dict:
    """Max abs difference of the default segmented encoding versus one transformer pass."""
    torch.set_num_threads(threads)
    encoder = wav2vec2_from_config(device=device)
    wave = normalize_loudness(synthetic_speech(seconds), 16000)
    single = encode_audio_features(encoder, wave, segment_seconds=seconds + 1)
    stitched = encode_audio_features(encoder, wave)
    diff = (single - stitched).abs()
    return {"seconds": seconds, "max_abs_err": float(diff.max()), "mean_abs_err": float(diff.mean()),
            "max_abs_feature": float(single.abs().max()), "per_layer_max": diff.amax(dim=(0, 2)).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--segment-check", type=float, metavar="SECONDS")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.segment_check:
        print(json.dumps(segment_check(args.segment_check, args.device, args.threads)))
        return
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.device, args.threads)))
        return
    for minutes in args.minutes:
        cmd = [sys.executable, __file__, "--one", str(minutes), "--device", args.device,
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        print(proc.stdout.strip() or f'{{"minutes": {minutes}, "error": {json.dumps(proc.stderr[-500:])}}}',
              flush=True)


if __name__ == "__main__":
    main()
