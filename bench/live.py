"""Live preview benchmark: time to the first playable segment, and stream copy vs re-encode combine.

    python3 bench/live.py first [--frames 120 --size 64 --steps 2]   # (a) tiny CPU preset, as bench/stream.py
    python3 bench/live.py combine [--frames 90000 --chunk-frames 1800 --size 64]   # (b) a synthetic hour
    python3 bench/live.py combine --frames 1500 --chunk-frames 72 --size 832 --height 480 --grain 12  # 480p

(a) renders the tiny model (bench/stream.py's ``tiny_inputs``) with a LiveOutput and polls
live/index.m3u8 from another thread: "first segment" is the time from the render's start until the
playlist first names a segment, next to the time of one chunk. The 14B/H100 estimate adds one 480x832
segment encode (medium, 72 frames: measured here on synthetic frames) to streaming_perf.md's per-chunk
anchors (4-step LoRA ~14 s end to end; 40 x 3 NFE limit 221 s).
(b) builds a synthetic job folder of ``--frames`` frames (small frames: the ratio is what matters, and the
re-encode cost grows with the pixels while stream copy does not, so at 480p the ratio is larger) with
live segments, then runs both Video Combine paths and checks frame count and audio length. Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infinitetalk_core.stream.job import JobDirectory, JobFingerprint  # noqa: E402
from infinitetalk_core.stream.plan import plan_chunks  # noqa: E402
from infinitetalk_core.stream.render import render_to_job  # noqa: E402
from infinitetalk_core.video.concat import concat_streams  # noqa: E402
from infinitetalk_core.video.live import LiveOutput, encode_segment  # noqa: E402
from infinitetalk_core.video.probe import decoded_audio_seconds, decoded_frame_count  # noqa: E402

H100_CHUNK_S = {"4-step LoRA (~14 s/chunk)": 14.0, "40x3 NFE limit (221 s/chunk)": 221.0}


def _first_segment(playlist: Path, start: float, found: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if any(line.endswith(".ts") for line in playlist.read_text().splitlines()):
                found.append(time.perf_counter() - start)
                return
        except OSError:
            pass
        time.sleep(0.01)


def run_first(args) -> None:
    from stream import tiny_inputs

    torch.set_num_threads(2)
    model, vae, refs, features, text, settings, encoder = tiny_inputs(args.frames, args.size, args.steps, "none")
    plan = plan_chunks(args.frames, args.chunk, args.context)
    job_dir = Path(tempfile.mkdtemp(prefix="live-bench-")) / "job"
    live, found, stop, saved = LiveOutput(job_dir), [], threading.Event(), []
    start = time.perf_counter()
    watcher = threading.Thread(target=_first_segment, args=(live.playlist_path, start, found, stop), daemon=True)
    watcher.start()
    render_to_job(job_dir, model, vae, plan, refs, features, text, settings, image_encoder=encoder,
                  model_identity="tiny", live=live, on_chunk_saved=lambda r, io: saved.append(time.perf_counter()))
    stop.set()
    chunk = (saved[-1] - start) / len(saved)
    yy, xx = np.mgrid[:480, :832]  # smooth moving content (noise would be x264's worst case)
    frames = np.stack([np.stack([(xx + 4 * k) % 256, (yy + k) % 256, (xx + yy) // 5 % 256], -1)
                       for k in range(72)]).astype(np.uint8)
    t = time.perf_counter()
    encode_segment(frames, 0, (np.zeros((2, 72 * 1920), np.float32), 48000))
    seg = time.perf_counter() - t
    print(f"| tiny CPU preset ({args.size}px, {plan.num_chunks} chunks) | first segment listed {found[0]:.2f} s "
          f"| mean chunk {chunk:.2f} s |")
    print(f"| segment encode 480x832x72 (medium, crf 19) | {seg:.2f} s | |")
    for name, chunk_s in H100_CHUNK_S.items():
        print(f"| 14B on H100, {name} | first segment ~{chunk_s + seg:.1f} s | chunk {chunk_s:.0f} s |")


def _synthetic_job(root: Path, frames: int, chunk: int, size: int, audio, height: int = 0,
                   grain: int = 0) -> JobDirectory:
    """``height`` (0 = square) by ``size`` frames: a moving ramp, plus ``grain`` levels of fixed noise (a
    harder, more camera-like case for the encoder than the smooth ramp)."""
    height = height or size
    chunks = -(-frames // chunk)
    layout = {"num_chunks": chunks, "output_frames": frames, "height": height, "width": size, "fps": 25}
    noise = np.random.default_rng(0).integers(0, grain + 1, (height, size, 3), dtype=np.int16) if grain else 0
    job = JobDirectory.open(root / "job", JobFingerprint({"synthetic": str(frames)}), layout)
    live = LiveOutput(job.path, audio)
    ramp = np.arange(size)[None, None, :, None]  # along the width
    for i in range(chunks):
        n = min(chunk, frames - i * chunk)
        part = (ramp + np.arange(n)[:, None, None, None] * 3 + i) % 256
        part = (np.broadcast_to(part, (n, height, size, 3)) + noise).clip(0, 255).astype(np.uint8)
        job.commit_chunk(i, part, {"x": torch.zeros(1)})
        live.add(job, i, part)
    return job


def run_combine(args) -> None:
    from infinitetalk_core.video.writer import Mp4Writer

    root = Path(tempfile.mkdtemp(prefix="live-combine-"))
    rate = 16000
    t = np.arange(int(args.frames / 25 * rate)) / rate
    audio = ((0.2 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32), rate)
    t0 = time.perf_counter()
    job = _synthetic_job(root, args.frames, args.chunk_frames, args.size, audio, args.height, args.grain)
    setup = time.perf_counter() - t0
    live = LiveOutput(job.path)
    t0 = time.perf_counter()
    copy = concat_streams(live.segments_for(job), root / "copy.mp4", job.output_frames, audio, temp_dir=root,
                          frame_counts=[r.frames for r in job.manifest.chunks])
    copy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    height = args.height or args.size
    with Mp4Writer(root / "encode.mp4", args.size, height, job.output_frames, audio=audio, temp_dir=root) as w:
        for batch in job.iter_frame_batches():  # as Video Combine: chunk by chunk
            w.write(np.ascontiguousarray(batch))
    encode_s = time.perf_counter() - t0
    counts = [decoded_frame_count(p) for p in (copy, root / "encode.mp4")]
    seconds = [decoded_audio_seconds(p) for p in (copy, root / "encode.mp4")]
    print(f"| synthetic job {args.frames} frames, {args.size}x{height} (grain {args.grain}), {len(job.manifest.chunks)} chunks "
          f"(setup {setup:.0f} s) | | |")
    print(f"| stream copy | {copy_s:.2f} s | frames {counts[0]}, audio {seconds[0]:.3f} s |")
    print(f"| re-encode | {encode_s:.2f} s | frames {counts[1]}, audio {seconds[1]:.3f} s |")
    print(f"| ratio | {encode_s / copy_s:.1f}x | same frames: {counts[0] == counts[1]}, "
          f"audio diff {abs(seconds[0] - seconds[1]) * 1000:.0f} ms |")
    job.close()
    rate_480 = _encode_rate_480()  # at small frames both paths are mostly the (shared) AAC encode
    projected = args.frames / rate_480 + copy_s
    print(f"| re-encode at 480x832, projected | {projected:.0f} s | {rate_480:.1f} frames/s measured on 100 "
          f"frames + the audio; ratio vs stream copy {projected / copy_s:.0f}x |")


def _encode_rate_480(count: int = 100) -> float:
    """Frames per second of Video Combine's encode (medium, crf 19) at 480x832 on this machine."""
    from infinitetalk_core.video.writer import write_mp4

    yy, xx = np.mgrid[:480, :832]
    frames = np.stack([np.stack([(xx + 4 * k) % 256, (yy + k) % 256, (xx + yy) // 5 % 256], -1)
                       for k in range(count)]).astype(np.uint8)
    with tempfile.TemporaryDirectory() as work:
        t = time.perf_counter()
        write_mp4(Path(work) / "rate.mp4", [frames], count, 832, 480)
        return count / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    first = sub.add_parser("first")
    first.add_argument("--frames", type=int, default=120)
    first.add_argument("--size", type=int, default=64)
    first.add_argument("--steps", type=int, default=2)
    first.add_argument("--chunk", type=int, default=33)
    first.add_argument("--context", type=int, default=9)
    combine = sub.add_parser("combine")
    combine.add_argument("--frames", type=int, default=90_000)
    combine.add_argument("--chunk-frames", type=int, default=1800)
    combine.add_argument("--size", type=int, default=64, help="frame width (and height unless --height)")
    combine.add_argument("--height", type=int, default=0, help="frame height; 0 = --size")
    combine.add_argument("--grain", type=int, default=0, help="levels of fixed noise on every frame")
    args = parser.parse_args()
    print("| what | time | notes |\n|---|---|---|")
    run_first(args) if args.mode == "first" else run_combine(args)


if __name__ == "__main__":
    main()
