"""Streaming-engine benchmark: per-chunk time split (DiT / VAE / colour / IO), peak RSS, long jobs.

Modes (python3 bench/stream.py MODE --help):
  cpu   tiny DiT + stand-in VAE/CLIP on CPU: per-chunk wall time split and peak RSS (one process).
  rss   runs `cpu` in a fresh subprocess at 1x, 4x and 16x a base length and prints the peak RSS of
        each: it must not grow with the video length (frames go to the job directory, not to RAM).
  long  a long job (default 2000 frames): uninterrupted run; a second run SIGKILLed after a few chunks
        and resumed; compares the frames byte for byte, encodes the mp4 with the original audio (a
        44.1 kHz stereo WAV) and checks its decoded frame count and audio duration.
  passes  one chunk with the guidance passes batched into one DiT forward vs one forward per pass
        (median DiT seconds of --repeats runs each, tiny model on CPU).
  gpu   full-size random-weight InfiniteTalk DiT (480x832x81, bf16) on CUDA: one chunk per --recipes entry
        (default 40 steps x 3 passes and 4 x 1; passes 1 or 3), DiT time vs the compute limit of streaming_perf.md §3
        (1.825 PFLOP per forward; H100 989 TFLOP/s dense bf16 -> 221 s and 7.4 s per chunk).
        The VAE is the stand-in (its time is not the real VAE's). Needs ~40 GB of GPU memory.
  post  peak host RAM transient of one chunk's post-processing (decoded, colour-corrected float pixels
        [3, 81, 480, 832] -> kept uint8 frames + float32 context tail), before (float32 kept frames to the
        host, then frames_to_uint8) and after (uint8 conversion where the pixels are, uint8 to the host),
        each in a fresh process on the CPU (--size is ignored; --height/--width set the frame).

Numbers are printed as JSON lines so they can be pasted into reports. No timed assertions here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/stream_gpu.py

from infinitetalk_core.sampling.guidance import GuidanceConfig  # noqa: E402
from infinitetalk_core.stream.host import TextContexts  # noqa: E402
from infinitetalk_core.stream.plan import plan_chunks  # noqa: E402
from infinitetalk_core.stream.render import render_to_job  # noqa: E402
from infinitetalk_core.stream.settings import StreamSettings  # noqa: E402
from infinitetalk_core.stream.sources import TensorReference  # noqa: E402
from infinitetalk_core.stream.standin_vae import StandInVAE  # noqa: E402
import stream_gpu  # noqa: E402  (the gpu mode)
from infinitetalk_core.stream.standins import (  # noqa: E402
    StandInImageEncoder,
    random_audio_features,
    tiny_dit,
)



def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def tiny_inputs(frames: int, size: int, steps: int, color: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 1, size, size, generator=g) * 2 - 1
    text = TextContexts.single(torch.randn(12, 16, generator=g), torch.randn(9, 16, generator=g))
    settings = StreamSettings(
        steps=steps, shift=7.0, guidance=GuidanceConfig(5.0, 4.0), seed=42, color_method=color
    )
    return (
        tiny_dit(0),
        StandInVAE(0),
        TensorReference(image),
        random_audio_features(frames, seed=seed),
        text,
        settings,
        StandInImageEncoder(16),
    )


def run_cpu(args) -> dict:
    torch.set_num_threads(args.threads)
    model, vae, refs, features, text, settings, encoder = tiny_inputs(
        args.frames, args.size, args.steps, args.color
    )
    plan = plan_chunks(args.frames, args.chunk, args.context)
    rows = []

    def saved(result, io_seconds):
        rows.append({**{k: round(v, 4) for k, v in result.timings.items()}, "io": round(io_seconds, 4)})
        if args.verbose:
            print(
                json.dumps({"chunk": result.index, **rows[-1], "rss_mb": round(peak_rss_mb(), 1)}), flush=True
            )

    job_dir = Path(args.job or tempfile.mkdtemp(prefix="stream-bench-")) / "job"
    start = time.perf_counter()
    job = render_to_job(
        job_dir,
        model,
        vae,
        plan,
        refs,
        features,
        text,
        settings,
        image_encoder=encoder,
        model_identity="tiny-dit-seed0",
        on_chunk_saved=saved,
    )
    wall = time.perf_counter() - start
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} if rows else {}
    return {
        "mode": "cpu",
        "frames": args.frames,
        "size": args.size,
        "chunk": args.chunk,
        "steps": args.steps,
        "chunks_generated": len(rows),
        "chunks_total": plan.num_chunks,
        "wall_s": round(wall, 2),
        "mean_chunk_s": mean,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "job": str(job.path),
    }


def _child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_rss(args) -> dict:
    results = []
    for factor in (1, 4, 16):
        with tempfile.TemporaryDirectory() as tmp:
            r = _child(
                [
                    "cpu",
                    "--frames",
                    str(args.frames * factor),
                    "--size",
                    str(args.size),
                    "--steps",
                    str(args.steps),
                    "--job",
                    tmp,
                    "--threads",
                    str(args.threads),
                    "--color",
                    args.color,
                ]
            )
        results.append(
            {
                "factor": factor,
                "frames": r["frames"],
                "chunks": r["chunks_total"],
                "peak_rss_mb": r["peak_rss_mb"],
                "wall_s": r["wall_s"],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    held = args.frames * 16 * args.size * args.size * 3 * 4 / 2**20
    return {"mode": "rss", "runs": results, "float32_frames_of_16x_in_ram_would_be_mb": round(held, 1)}


def _write_wav(path: Path, seconds: float, rate: int = 44100) -> None:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    pcm = (np.stack([tone, tone * 0.8], 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _chunks_done(job: Path) -> int:
    try:
        return len(json.loads((job / "manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


def run_long(args) -> dict:
    from infinitetalk_core.video.probe import decoded_audio_seconds, decoded_frame_count

    root = Path(args.job or tempfile.mkdtemp(prefix="stream-long-"))
    common = [
        "cpu",
        "--frames",
        str(args.frames),
        "--size",
        str(args.size),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--color",
        args.color,
    ]
    clean = _child([*common, "--job", str(root / "clean")])
    print(json.dumps({"uninterrupted": clean}), flush=True)
    killed_dir = root / "killed"
    proc = subprocess.Popen(
        [sys.executable, __file__, *common, "--job", str(killed_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while _chunks_done(killed_dir / "job") < args.kill_after and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(args.kill_delay)  # land somewhere inside the next chunk
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _chunks_done(killed_dir / "job")
    resumed = _child([*common, "--job", str(killed_dir)])
    print(json.dumps({"killed_after_chunks": done_at_kill, "resumed": resumed}), flush=True)
    # bit-identical: the SHA-256 of every chunk's uint8 frames (recorded before the chunk is encoded)
    a = [r.content for r in _open(root / "clean" / "job").manifest.chunks]
    b = [r.content for r in _open(killed_dir / "job").manifest.chunks]
    identical = len(a) == len(b) and a == b
    wav = root / "original.wav"
    _write_wav(wav, args.frames / 25 + 1.3)  # the original track runs longer than the video: trimmed
    start = time.perf_counter()
    mp4 = _open(killed_dir / "job").write_mp4(root / "long.mp4", audio=str(wav))
    encode_s = time.perf_counter() - start
    return {
        "mode": "long",
        "frames": args.frames,
        "killed_after_chunks": done_at_kill,
        "chunks_generated_on_resume": resumed["chunks_generated"],
        "identical_to_uninterrupted": identical,
        "mp4_frames": decoded_frame_count(mp4),
        "mp4_audio_s": round(decoded_audio_seconds(mp4), 4),
        "expected_s": args.frames / 25,
        "encode_s": round(encode_s, 2),
        "peak_rss_mb": {
            "uninterrupted": clean["peak_rss_mb"],
            "resumed": resumed["peak_rss_mb"],
            "bench_parent_incl_encode": round(peak_rss_mb(), 1),
        },
        "dir": str(root),
    }


def _open(path: Path):
    from infinitetalk_core.stream.job import JobDirectory, JobFingerprint, JobManifest

    manifest = JobManifest.from_json((path / "manifest.json").read_text(), str(path))
    job = JobDirectory.open(path, JobFingerprint(manifest.inputs), manifest.layout)
    job.close()  # read-only use here: no lock needed
    return job


def run_passes(args) -> dict:
    from infinitetalk_core.stream.generate import generate_chunks

    torch.set_num_threads(args.threads)
    model, vae, refs, features, text, settings, encoder = tiny_inputs(
        args.frames, args.size, args.steps, "none"
    )
    plan = plan_chunks(args.frames, args.chunk, args.context)
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    for _ in range(args.repeats):
        for name, batched in (("batched", True), ("sequential", False)):
            s = StreamSettings(
                **{**settings.to_json(), "guidance": settings.guidance, "batch_passes": batched}
            )
            result = next(generate_chunks(model, vae, plan, refs, features, text, s, image_encoder=encoder))
            times[name].append(result.timings["dit"])
    med = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    return {
        "mode": "passes",
        "size": args.size,
        "chunk": args.chunk,
        "steps": args.steps,
        "passes": 3,
        "median_dit_s": med,
        "speedup": round(med["sequential"] / med["batched"], 2),
    }


def _post_child(args) -> dict:
    """One post-processing variant on a decoded chunk already in memory; peak RSS above that baseline."""
    from infinitetalk_core.video.writer import frames_to_uint8, frames_to_uint8_on_device

    torch.set_num_threads(args.threads)
    frames, context, keep = args.chunk, args.context, args.chunk  # chunk 0 keeps every frame
    pixels = torch.empty(3, frames, args.height, args.width).uniform_(-1.1, 1.1)  # in place: no temporaries
    base = peak_rss_mb()
    start = time.perf_counter()
    tail = pixels[:, -context:].detach().to("cpu", torch.float32).clone()
    kept = pixels[:, :keep].detach()
    if args.variant == "before":  # the old path as a GPU run sees it: a float32 host copy, then uint8 on the host
        host = kept.to("cpu", torch.float32).clone()
        out = frames_to_uint8(host)
        held = host.numel() * 4 + out.nbytes  # the ChunkResult kept the float frames beside the uint8 ones
    elif args.variant == "before_cpu":  # the old path verbatim on a CPU device (.to() is then a view)
        out = frames_to_uint8(kept.to("cpu", torch.float32))
        held = out.nbytes
    else:  # "after": on a CPU device the device temporaries are host memory too, so they are included
        out = frames_to_uint8_on_device(kept).to("cpu").numpy()
        held = out.nbytes
    seconds = time.perf_counter() - start
    return {
        "variant": args.variant,
        "shape": [3, frames, args.height, args.width],
        "decoded_float_mb": round(pixels.numel() * 4 / 2**20, 1),
        "kept_uint8_mb": round(out.nbytes / 2**20, 1),
        "context_tail_mb": round(tail.numel() * 4 / 2**20, 1),
        "peak_transient_mb": round(peak_rss_mb() - base, 1),
        "held_on_host_mb": round((held + tail.numel() * 4) / 2**20, 1),
        "seconds": round(seconds, 3),
    }


def run_post(args) -> dict:
    if args.variant:
        return _post_child(args)
    common = ["--chunk", str(args.chunk), "--context", str(args.context), "--height", str(args.height),
              "--width", str(args.width), "--threads", str(args.threads)]
    results = []
    for variant in ("before", "before_cpu", "after"):
        results.append(_child(["post", "--variant", variant, *common]))
        print(json.dumps(results[-1]), flush=True)
    return {"mode": "post", "results": results,
            "note": "before: host side of a GPU run (float32 copy + frames_to_uint8 on the host); "
                    "before_cpu / after: CPU device, device temporaries included; on a GPU the after "
                    "path's host side is the uint8 frames and the context tail only"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("cpu", "rss", "long", "passes", "gpu", "post"))
    parser.add_argument("--frames", type=int, default=None, help="audio/video length in 25 fps frames")
    parser.add_argument("--size", type=int, default=128, help="square frame size in pixels (multiple of 16)")
    parser.add_argument("--chunk", type=int, default=81)
    parser.add_argument("--context", type=int, default=9)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--color", default="lab", help="colour method (lab, histogram, mkl, none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--job", default=None, help="folder for job directories (default: a temp folder)")
    parser.add_argument(
        "--kill-after", type=int, default=5, help="long mode: chunks finished before the kill"
    )
    parser.add_argument(
        "--kill-delay", type=float, default=0.3, help="long mode: seconds into the next chunk"
    )
    parser.add_argument("--repeats", type=int, default=3, help="passes mode: runs per variant")
    parser.add_argument("--verbose", action="store_true", help="cpu mode: one line per chunk")
    parser.add_argument("--height", type=int, default=480, help="post mode: frame height")
    parser.add_argument("--width", type=int, default=832, help="post mode: frame width")
    parser.add_argument("--recipes", type=stream_gpu.recipes, default=[(40, 3), (4, 1)],
                        help="gpu mode: STEPSxPASSES,... (passes 1 or 3), e.g. 8x3,4x1")
    parser.add_argument("--variant", choices=("before", "before_cpu", "after"), default=None,
                        help="post mode: run one variant in this process")
    args = parser.parse_args()
    defaults = {"cpu": 300, "rss": 150, "long": 2000, "passes": 81, "gpu": 81, "post": 81}
    args.frames = args.frames or defaults[args.mode]
    result = {"cpu": run_cpu, "rss": run_rss, "long": run_long, "passes": run_passes, "gpu": stream_gpu.run_gpu,
              "post": run_post}[
        args.mode
    ](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
