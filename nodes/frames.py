"""Frame sources Video Combine can stream: a finished job directory (the sampler's output) or an IMAGE.

Why a handle and not an IMAGE batch: 2000 frames at 640x640 are 9.8 GB as ComfyUI's float32 IMAGE,
and ComfyUI keeps node outputs cached in RAM. The Streaming Sampler therefore returns this small
handle to its job directory (uint8 chunks on disk); Video Combine reads it one chunk at a time.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch


class FramesSource(Protocol):
    width: int
    height: int
    frame_count: int
    fps: Fraction

    def iter_uint8(self, batch: int) -> Iterator[np.ndarray]:
        """uint8 frames [n, H, W, 3] in order."""
        ...


def _fps(value: float | Fraction) -> Fraction:
    return value if isinstance(value, Fraction) else Fraction(value).limit_denominator(1001)


@dataclass
class ImageFrames:
    """A ComfyUI IMAGE batch [F, H, W, 3] in [0, 1] at ``fps``."""

    images: torch.Tensor
    fps_value: float | Fraction

    @property
    def frame_count(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def fps(self) -> Fraction:
        return _fps(self.fps_value)

    def iter_uint8(self, batch: int) -> Iterator[np.ndarray]:
        for i in range(0, self.frame_count, batch):
            part = self.images[i:i + batch, ..., :3].detach().float().cpu()
            yield part.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass
class JobFrames:
    """What flows on an INFINITETALK_FRAMES socket: a finished (or partial) job directory."""

    job: Any  # infinitetalk_core.stream.job.JobDirectory
    fps_value: Fraction = Fraction(25)

    @property
    def path(self) -> str:
        return str(self.job.path)

    @property
    def frame_count(self) -> int:
        return int(self.job.frames_done)

    @property
    def height(self) -> int:
        return int(self.job.manifest.layout["height"])

    @property
    def width(self) -> int:
        return int(self.job.manifest.layout["width"])

    @property
    def fps(self) -> Fraction:
        return _fps(self.fps_value)

    def iter_uint8(self, batch: int) -> Iterator[np.ndarray]:
        for chunk in self.job.iter_frame_batches():  # memory-mapped, one chunk at a time
            for i in range(0, len(chunk), batch):
                yield np.ascontiguousarray(chunk[i:i + batch])

    def last_frames(self, count: int) -> torch.Tensor:
        """The last ``count`` frames as an IMAGE [count, H, W, 3] (previews, the optional IMAGE output)."""
        kept: list[np.ndarray] = []
        for chunk in self.job.iter_frame_batches():
            kept.append(np.asarray(chunk[-count:]))
            kept = [np.concatenate(kept)[-count:]] if kept else kept
        if not kept:
            return torch.zeros(0, self.height, self.width, 3)
        return torch.from_numpy(kept[0].copy()).float().div(255)

    def __repr__(self) -> str:  # shown in ComfyUI's debug output
        return f"JobFrames({self.path!r}, {self.frame_count} frames, {self.width}x{self.height})"
