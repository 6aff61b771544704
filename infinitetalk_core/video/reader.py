"""Read video frames through ffmpeg with bounded memory (no torchvision, no whole-video arrays).

Frames come out as uint8 ``[H, W, 3]`` numpy arrays in decode order; frame ``i`` is the i-th decoded
frame (``-fps_mode passthrough``: ffmpeg neither drops nor duplicates frames). An optional ``size``
scales to cover (height, width) and centre-crops, inside ffmpeg.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import FFmpegError, InputValidationError
from .ffmpeg import ffmpeg_exe, stderr_tail
from .probe import probe_video


def _resize_filter(size: tuple[int, int] | None, resize) -> list[str]:
    """ffmpeg -vf for a ResizeCrop geometry (exact reference crop) or a plain cover+centre crop."""
    if resize is not None:
        return [
            "-vf",
            f"scale={resize.resize_w}:{resize.resize_h}:flags=bilinear,"
            f"crop={resize.width}:{resize.height}:{resize.left}:{resize.top}",
        ]
    if size is not None:
        h, w = size
        return ["-vf", f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=bilinear,crop={w}:{h}"]
    return []


def iter_video_frames(
    path: str | Path, size: tuple[int, int] | None = None, stop: int | None = None, resize=None
) -> Iterator[np.ndarray]:
    """Yield frames 0, 1, ... (up to ``stop`` exclusive) as uint8 [H, W, 3]; one frame in memory at a time.

    ``resize``: a ``stream.buckets.ResizeCrop`` (the reference's cover-resize + centre crop, bilinear);
    ``size``: (height, width) for a plain cover + centre crop. Neither: native size.
    """
    path = str(path)
    if resize is not None:
        h, w = resize.height, resize.width
    elif size is not None:
        h, w = size
    else:
        info = probe_video(path)
        h, w = info.height, info.width
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        path,
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        *_resize_filter(size, resize),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    frame_bytes = h * w * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes)
    index, exhausted = 0, False
    try:
        while stop is None or index < stop:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                exhausted = True
                break
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
            index += 1
    finally:
        proc.stdout.close()
        if not exhausted:  # stopped early (stop reached or consumer closed us): ffmpeg is not needed
            proc.kill()
        err = proc.stderr.read()
        proc.stderr.close()
        code = proc.wait()
        if exhausted and code != 0:
            raise FFmpegError(
                f"ffmpeg failed to decode '{path}': {stderr_tail(err)}",
                "Re-encode the video (e.g. to H.264 mp4).",
            )


def read_video_frames(
    path: str | Path, indices: Sequence[int], size: tuple[int, int] | None = None, resize=None
) -> np.ndarray:
    """Frames at ``indices`` (any order, repeats allowed) as uint8 [N, H, W, 3].

    Decodes sequentially up to the largest index and keeps only the requested frames, so memory is
    N frames whatever the video length.
    """
    if not indices:
        raise InputValidationError("No frame indices were requested.", "Pass at least one index.")
    if min(indices) < 0:
        raise InputValidationError(f"Frame index {min(indices)} is negative.", "Use indices >= 0.")
    wanted = set(int(i) for i in indices)
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    for decoded, frame in enumerate(
        iter_video_frames(path, size=size, stop=max(wanted) + 1, resize=resize), start=1
    ):
        if decoded - 1 in wanted:
            kept[decoded - 1] = frame.copy()
    missing = sorted(wanted - kept.keys())
    if missing:
        raise InputValidationError(
            f"'{path}' has {decoded} decodable frames; frame {missing[0]} was requested.",
            "Request indices below the frame count (probe_video(path).frame_count).",
        )
    return np.stack([kept[int(i)] for i in indices])


class SequentialFrameReader:
    """Random access for mostly increasing indices: keeps one ffmpeg decoder open and reads forward;
    a request behind the current position restarts the decoder. Memory: one frame.

    Used for per-chunk reference frames (increasing with time; loop/ping-pong restarts once per period).
    """

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None, resize=None):
        self.path, self.size, self.resize = str(path), size, resize
        self._frames: Iterator[np.ndarray] | None = None
        self._next = 0
        self._last: tuple[int, np.ndarray] | None = None

    def get(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3] frame ``index`` (a copy)."""
        if self._last is not None and self._last[0] == index:
            return self._last[1].copy()
        if self._frames is None or index < self._next:
            self.close()
            self._frames, self._next = iter_video_frames(self.path, self.size, resize=self.resize), 0
        frame = None
        while self._next <= index:
            frame = next(self._frames, None)
            if frame is None:
                self.close()
                raise InputValidationError(
                    f"'{self.path}' ended before frame {index}.",
                    "Request indices below probe_video(path).frame_count.",
                )
            self._next += 1
        self._last = (index, frame.copy())
        return self._last[1].copy()

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # runs the generator's finally: kills ffmpeg
            self._frames = None
