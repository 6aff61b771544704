"""Disk use of a job folder while rendering, per minute of 832x480 video at 25 fps.

    python bench/job_disk.py                 # 1 minute of 480p (21 chunks of 72 new frames)
    python bench/job_disk.py --minutes 3 --content smooth

Commits chunks of the default plan (81 frames, 9 context: 72 new frames per chunk) with a carry state
of the real size (9 frames x 3 x 480 x 832 float32 = 43 MB) through the real JobDirectory, and prints
the folder's size as it grows (the peak is what "while rendering" needs) next to the raw uint8 frames
the old store kept. Frame content decides the chunk size: ``grain`` (ffmpeg testsrc2 with temporal
noise, a hard case for the codec) or ``smooth`` (the same without noise). No model runs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infinitetalk_core.stream.job import CHECKPOINT_EVERY, JobDirectory, JobFingerprint  # noqa: E402
from infinitetalk_core.video.ffmpeg import ffmpeg_exe  # noqa: E402

H, W, NEW_FRAMES, CONTEXT = 480, 832, 72, 9


def proxy_frames(content: str, count: int) -> np.ndarray:
    """``count`` frames of a moving test pattern (uint8 [n, H, W, 3]) from ffmpeg's lavfi."""
    source = f"testsrc2=size={W}x{H}:rate=25" + (",noise=alls=4:allf=t" if content == "grain" else "")
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source,
           "-frames:v", str(count), "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(count, H, W, 3)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--content", choices=("grain", "smooth"), default="grain")
    args = parser.parse_args()
    chunks = max(1, round(args.minutes * 60 * 25 / NEW_FRAMES))
    frames = proxy_frames(args.content, NEW_FRAMES)
    layout = {"num_chunks": chunks, "output_frames": chunks * NEW_FRAMES, "height": H, "width": W, "fps": 25}
    root = Path(tempfile.mkdtemp(prefix="job-disk-"))
    job = JobDirectory.open(root / "job", JobFingerprint({"bench": args.content}), layout)
    peak, encode_s = 0, 0.0
    print(f"| chunk | video s | job folder MB | raw uint8 MB (old store) |\n|---|---|---|---|")
    for i in range(chunks):
        state = {"next_chunk": torch.tensor([i + 1]), "context_pixels": torch.rand(3, CONTEXT, H, W) * 2 - 1}
        start = time.perf_counter()
        job.commit_chunk(i, np.roll(frames, i, axis=2), state)  # shifted so chunks differ
        encode_s += time.perf_counter() - start
        size = folder_bytes(job.path)
        peak = max(peak, size)
        if i in (0, chunks - 1) or (i + 1) % CHECKPOINT_EVERY == 0:
            seconds = (i + 1) * NEW_FRAMES / 25
            print(f"| {i + 1} | {seconds:.1f} | {size / 2**20:.0f} | {(i + 1) * frames.nbytes / 2**20:.0f} |")
    job.close()
    minutes = chunks * NEW_FRAMES / 25 / 60
    chunk_bytes = sum(r.size for r in job.manifest.chunks)
    print(f"\n{args.content}: peak {peak / 2**20:.0f} MB for {minutes:.2f} min of 480p video = "
          f"{peak / 2**20 / minutes:.0f} MB per minute (chunks {chunk_bytes / 2**20 / minutes:.0f} MB/min, "
          f"states the rest); raw frames would be {chunks * frames.nbytes / 2**20 / minutes:.0f} MB/min. "
          f"Commit (encode + write) {encode_s / chunks:.2f} s per chunk on this machine.")


if __name__ == "__main__":
    main()
