"""Benchmark: wav2vec2 feature extraction speed and host memory versus audio duration.

Real-size chinese-wav2vec2-base architecture (bundled config) with random weights on a synthetic,
speech-like track. Each duration runs in a fresh subprocess so its peak RSS is its own.

    python3 bench/audio_encode.py                       # CPU, 1 and 10 minutes
    python3 bench/audio_encode.py --minutes 1 10 60 --device cuda
    python3 bench/audio_encode.py --segment-check 60    # stitched segments vs one pass, max abs error
    python3 bench/audio_encode.py --per-hour 3 6        # host bytes per hour of audio, both storages
    python3 bench/audio_encode.py --minutes 60 --lean   # a real hour: real widths, narrow inner layers

Reports per duration: seconds of audio per second of compute (prepare = resample/loudness excluded:
the track is generated at 16 kHz; loudness is timed separately), peak RSS (MiB) and, on CUDA, peak
allocated device memory. ``--store`` picks what is encoded: ``bf16`` = what Audio Encode holds for a run
(``encode_stored_features``: bfloat16 written window by window, plus the float32 digest), ``fp32`` = the
float32 features of ``encode_audio_features`` (what Audio Encode held before). Host memory per run, in MiB
above ``rss_before_mib`` (model, waveform and torch loaded): ``phase_peak_mib`` = the RSS high-water mark
of each phase (CNN + interpolation, feature projection, transformer windows; the kernel's mark is reset at
each boundary through /proc/self/clear_refs), ``encode_peak_mib`` = their maximum, ``held_mib`` = RSS
once encoding returned (the features plus what the allocator keeps).

``--tensor-peaks`` adds ``tensor_peak_mib``: the peak bytes of live CPU tensors in each of five phases
(GroupNorm statistics, CNN, interpolation, projection, transformer), from the profiler's allocation
events: exact and free of allocator noise, but the run's RSS then includes the profiler's buffers.

``--per-hour A B`` runs both storages at A and B minutes (plain runs for RSS, profiled ones for tensor
bytes) and extrapolates to 60 minutes: the features' bytes exactly (90,000 frames x layers x width x
bytes per value); each phase's peak as a + b x minutes fitted through the two runs (each phase holds
per-window/per-segment buffers, constant, and full-length tensors, linear in length), the encoding's
peak = the largest phase at 60 minutes. Use durations of minutes, not seconds: up to 40 s the
transformer runs in one pass whose attention grows quadratically, so short runs do not extrapolate. An
hour of real-size encoding on a 2-core CPU takes ~15-40 minutes per storage, hence the extrapolation.

Measured (2-core CPU sandbox, real-size random weights, one hour, ``--minutes 60``): bf16 features
1582 MiB (1.659 GB), encoding peak 2145 MiB above the 1000 MiB before it, 1766 MiB held after; fp32
3164 MiB, peak 3694 MiB, 3326 MiB held. ``--per-hour 3 6`` tensor bytes: bf16 peak 2.11 GB, fp32 3.77 GB.
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

from infinitetalk_core.audio import (
    bundled_config,
    encode_audio_features,
    encode_stored_features,
    normalize_loudness,
    wav2vec2_from_config,
)

FRAMES_PER_HOUR = 25 * 3600
STORES = {"bf16": torch.bfloat16, "fp32": torch.float32}


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


def _status_mib(field: str) -> float | None:
    """VmRSS / VmHWM of this process in MiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Restart the RSS high-water mark at the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def stored_bytes_per_hour(layers: int, width: int, dtype: torch.dtype) -> int:
    """Bytes of one speaker's whole-run features for an hour of audio: [90000, layers, width]."""
    return FRAMES_PER_HOUR * layers * width * torch.empty((), dtype=dtype).element_size()


PHASES = ("cnn", "projection", "transformer")  # cnn includes the interpolation to 25 fps


class PhasePeaks:
    """RSS high-water mark above a baseline for each encoding phase, via forward hooks on the feature
    projection (the CNN and interpolation run before it, the transformer after it) and a reset of the
    kernel's high-water mark at each boundary: exact peaks, however short the spike."""

    def __init__(self, encoder):
        self.baseline = _status_mib("VmRSS")
        self.peaks: dict[str, float] = {}
        self.ok = self.baseline is not None and _reset_peak_rss()
        projection = encoder.model.feature_projection
        self._hooks = [projection.register_forward_pre_hook(lambda *_: self._close("cnn")),
                       projection.register_forward_hook(lambda *_: self._close("projection"))]

    def _close(self, phase: str) -> None:
        if self.ok:
            self.peaks[phase] = _status_mib("VmHWM") - self.baseline
            _reset_peak_rss()

    def finish(self) -> dict:
        self._close("transformer")
        for hook in self._hooks:
            hook.remove()
        return {k: round(v, 1) for k, v in self.peaks.items()} if self.ok and len(self.peaks) == 3 else {}


def lean_config() -> dict:
    """The real architecture where memory grows with length (first conv 512 wide at 3200 Hz, CNN output
    512 wide, 12 transformer layers x 768, 12 heads, positional conv 128) but narrow inner CNN layers (32)
    and feed-forward (64): ~5x less compute, so an hour encodes in minutes on a CPU. Only per-segment and
    per-window buffers shrink (the real inner CNN activations: ~30 MB per 10 s segment; the real
    feed-forward: 12 MB per 40 s window)."""
    config = bundled_config()[0]
    return dict(config, conv_dim=[512, 32, 32, 32, 32, 32, 512], intermediate_size=64)


def run_one(minutes: float, device: str, threads: int, store: str = "bf16", lean: bool = False,
            tensors: bool = False) -> dict:
    torch.set_num_threads(threads)
    encoder = wav2vec2_from_config(lean_config() if lean else None, device=device)
    wave = synthetic_speech(minutes * 60)
    t0 = time.perf_counter()
    wave = normalize_loudness(wave, 16000)
    t_loud = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    phases = PhasePeaks(encoder)
    t0 = time.perf_counter()

    def encode():
        if store == "fp32":
            return encode_audio_features(encoder, wave)
        return encode_stored_features(encoder, wave, dtype=STORES[store]).features

    if tensors:
        import infinitetalk_core.audio.features as features_module

        features, tensor_phase_peaks = tensor_peaks(encode, features_module, encoder)
    else:
        features = encode()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peaks = phases.finish()
    features_mib = features.numel() * features.element_size() / 2**20
    result = {
        "minutes": minutes, "device": device, "threads": threads, "store": store, "lean": lean,
        "dtype": str(features.dtype).replace("torch.", ""), "frames": features.shape[0],
        "encode_s": round(seconds, 2), "loudness_s": round(t_loud, 3),
        "audio_s_per_compute_s": round(minutes * 60 / seconds, 2),
        "features_mib": round(features_mib, 1),
        "features_gb_per_hour": round(stored_bytes_per_hour(features.shape[1], features.shape[2],
                                                            features.dtype) / 1e9, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if peaks:
        result.update(rss_before_mib=round(phases.baseline, 1), phase_peak_mib=peaks,
                      encode_peak_mib=max(peaks.values()),
                      held_mib=round(_status_mib("VmRSS") - phases.baseline, 1))
    if tensors:
        result["tensor_peak_mib"] = tensor_phase_peaks
    if device.startswith("cuda"):
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


TENSOR_PHASES = ("stats", "cnn", "interpolate", "projection", "transformer")


def tensor_peaks(encode, module, encoder) -> dict:
    """Peak bytes of live CPU tensors (MiB, from the profiler's allocation events: no allocator noise) in
    each encoding phase while ``encode()`` runs: stats = the first conv's GroupNorm statistics pass,
    cnn = the segmented CNN, interpolate = to 25 fps, projection = feature projection, transformer = the
    windows and the stored features. ``module``: the features module whose functions mark the phases."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    def marked(name, fn):
        def run(*args, **kwargs):
            with record_function("phase:" + name):
                return fn(*args, **kwargs)
        return run

    saved = {name: getattr(module, name) for name in ("_group_norm_stats", "conv_features")}
    projection = encoder.model.feature_projection
    module._group_norm_stats = marked("stats", saved["_group_norm_stats"])
    module.conv_features = marked("cnn", saved["conv_features"])
    projection.forward = marked("projection", projection.forward)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = encode()
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)
        del projection.forward

    def walk(events):
        for event in events:
            yield event
            yield from walk(event.children)

    events = list(walk(prof.profiler.kineto_results.experimental_event_tree()))
    ranges = {e.name[len("phase:"):]: (e.start_time_ns, e.end_time_ns) for e in events
              if e.name.startswith("phase:")}

    def phase_of(t: int) -> str:
        if ranges["stats"][0] <= t <= ranges["stats"][1]:
            return "stats"
        if t <= ranges["cnn"][1]:
            return "cnn"
        if t < ranges["projection"][0]:
            return "interpolate"
        return "projection" if t <= ranges["projection"][1] else "transformer"

    peaks = dict.fromkeys(TENSOR_PHASES, 0.0)
    for e in events:
        if e.tag == _EventType.Allocation and str(e.extra_fields.device) == "cpu":
            phase = phase_of(e.start_time_ns)
            peaks[phase] = max(peaks[phase], e.extra_fields.total_allocated / 2**20)
    return result, {k: round(v, 1) for k, v in peaks.items()}


def _subprocess_run(minutes: float, device: str, threads: int, store: str, lean: bool = False,
                    tensors: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--one", str(minutes), "--device", device, "--threads", str(threads),
           "--store", store] + (["--lean"] if lean else []) + (["--tensor-peaks"] if tensors else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"minutes": minutes, "store": store, "error": proc.stderr[-500:]}


def _fit(runs: list[dict], key: str, a: float, b: float) -> tuple[dict, dict]:
    """Per phase of ``runs[i][key]``: (a + b * minutes fits, value at 60 minutes in GB)."""
    fits, hour = {}, {}
    for phase in runs[0][key]:
        slope = (runs[1][key][phase] - runs[0][key][phase]) / (b - a)
        const = runs[0][key][phase] - slope * a
        fits[phase] = {"constant_mib": round(const, 1), "per_minute_mib": round(slope, 2)}
        hour[phase] = round((const + 60 * slope) * 2**20 / 1e9, 3)
    return fits, hour


def per_hour(minutes: list[float], device: str, threads: int, lean: bool = False) -> list[dict]:
    """Both storages at two durations, extrapolated to an hour (see the module docstring)."""
    a, b = minutes[:2]
    report = []
    for store in STORES:
        # RSS from plain runs (the profiler's own event buffers grow with length), tensors from profiled ones
        runs = [_subprocess_run(m, device, threads, store, lean) for m in (a, b)]
        profiled = [_subprocess_run(m, device, threads, store, lean, tensors=True) for m in (a, b)]
        for r in runs + profiled:
            print(json.dumps(r), flush=True)
        if any("phase_peak_mib" not in r for r in runs) or any("tensor_peak_mib" not in r for r in profiled):
            continue
        for r, t in zip(runs, profiled):
            r["tensor_peak_mib"] = t["tensor_peak_mib"]
        rss_fits, rss_hour = _fit(runs, "phase_peak_mib", a, b)
        tensor_fits, tensor_hour = _fit(runs, "tensor_peak_mib", a, b)
        stored = runs[0]["features_gb_per_hour"] * 1e9
        line = {"store": store, "lean": lean, "extrapolated_from_minutes": [a, b],
                "features_gb_per_hour": round(stored / 1e9, 3),
                "features_gib_per_hour": round(stored / 2**30, 3),
                "tensor_peak_gb_per_hour": tensor_hour,
                "encode_tensor_peak_gb_per_hour": max(tensor_hour.values()),
                "rss_peak_gb_per_hour": rss_hour, "encode_rss_peak_gb_per_hour": max(rss_hour.values()),
                "tensor_fits": tensor_fits, "rss_fits": rss_fits,
                "hour_encode_minutes_estimate": round(runs[1]["encode_s"] / b, 1)}
        print(json.dumps(line), flush=True)
        report.append(line)
    return report


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
    parser.add_argument("--store", choices=list(STORES), default="bf16")
    parser.add_argument("--segment-check", type=float, metavar="SECONDS")
    parser.add_argument("--per-hour", type=float, nargs=2, metavar=("MIN_A", "MIN_B"))
    parser.add_argument("--lean", action="store_true", help="real widths, narrow inner layers (lean_config)")
    parser.add_argument("--tensor-peaks", action="store_true", help="also live-tensor peaks per phase")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.segment_check:
        print(json.dumps(segment_check(args.segment_check, args.device, args.threads)))
        return
    if args.one is not None:
        result = run_one(args.one, args.device, args.threads, args.store, args.lean, args.tensor_peaks)
        print(json.dumps(result))
        return
    if args.per_hour:
        per_hour(list(args.per_hour), args.device, args.threads, args.lean)
        return
    for minutes in args.minutes:
        print(json.dumps(_subprocess_run(minutes, args.device, args.threads, args.store, args.lean,
                                         args.tensor_peaks)), flush=True)


if __name__ == "__main__":
    main()
