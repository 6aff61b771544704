"""The job folder's chunk store: each finished chunk as a small H.264 4:4:4 file (Matroska).

Why not raw frames: 832x480 uint8 is about 1.8 GB per minute of video; H.264 4:4:4 at crf 12 is
visually lossless (above the final mp4's crf 19 4:2:0) at roughly 2-6 % of that. Resume does not need
the frames bit-exact: it continues from the float state saved beside the chunks, so a resumed run still
produces bit-identical frames (the manifest records the SHA-256 of each chunk's uint8 frames before
encoding, which is what "identical" is checked against).
"""

from __future__ import annotations

import subprocess

import numpy as np

from ..errors import FFmpegError, JobDamagedError
from .ffmpeg import ffmpeg_exe, stderr_tail

CHUNK_SUFFIX = ".mkv"
CHUNK_CRF = 12
CHUNK_PRESET = "veryfast"  # the encode must stay small next to a chunk's sampling time


def encode_chunk(frames: np.ndarray) -> bytes:
    """uint8 [n, H, W, 3] -> Matroska bytes (H.264 yuv444p, crf 12); one chunk in memory."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "25", "-i", "-",
           "-c:v", "libx264", "-preset", CHUNK_PRESET, "-crf", str(CHUNK_CRF), "-pix_fmt", "yuv444p",
           "-f", "matroska", "-"]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise FFmpegError(f"ffmpeg could not encode a chunk of {n} frames: {stderr_tail(proc.stderr)}",
                          "Check that imageio-ffmpeg's ffmpeg runs (python -m infinitetalk_core.doctor).")
    return proc.stdout


def decode_chunk(data: bytes, frames: int, height: int, width: int, name: str = "chunk") -> np.ndarray:
    """Matroska bytes -> uint8 [frames, H, W, 3]; a wrong frame count or size is a damaged chunk."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "matroska", "-i", "-",
           "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
    expected = frames * height * width * 3
    if proc.returncode != 0 or len(proc.stdout) != expected:
        raise JobDamagedError(
            f"{name} does not decode to {frames} frames of {width}x{height} "
            f"({stderr_tail(proc.stderr) or f'{len(proc.stdout)} bytes'}).",
            "Queue the Streaming Sampler again with the same inputs: it regenerates damaged chunks.",
        )
    return np.frombuffer(proc.stdout, dtype=np.uint8).reshape(frames, height, width, 3)
