"""Reference-frame sources: one image, a tensor of frames, or a video file read lazily through ffmpeg.

A source hands out frame ``i`` as float32 [3, H, W] in [-1, 1] at the bucket size; ``references.py``
decides which ``i`` each chunk uses (by time, with the source's real frame rate). A video file is
never held in memory: frames are decoded sequentially on demand (``SequentialFrameReader``).
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputValidationError
from .buckets import resize_crop_geometry
from .host import tensor_digest


@runtime_checkable
class ReferenceFrames(Protocol):
    num_frames: int
    fps: Fraction
    size: tuple[int, int]  # (height, width) of the frames handed out

    def frame(self, index: int) -> torch.Tensor:
        """[3, H, W] float32 in [-1, 1]."""
        ...

    def fingerprint(self) -> str: ...

    def close(self) -> None: ...


def uint8_to_pixels(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1] (the reference's x/127.5 − 1)."""
    t = torch.as_tensor(np.asarray(frame)).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


LARGE_RESIZE = 4  # resized frame > 4x the crop: sample only the crop (a 10000x10 image needs GBs otherwise)


def _bilinear_axis(pixels: torch.Tensor, dim: int, full: int, start: int, count: int) -> torch.Tensor:
    """Output samples [start, start+count) of a bilinear resize (align_corners=False) of ``dim`` to
    ``full`` samples, computed from the source only: PyTorch's own sampling formula."""
    size = pixels.shape[dim]
    dst = torch.arange(start, start + count, dtype=torch.float64)
    src = ((dst + 0.5) * (size / full) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=size - 1)
    i1 = (i0 + 1).clamp(max=size - 1)
    shape = [1] * pixels.ndim
    shape[dim] = count
    weight = (src - i0).float().reshape(shape)
    return pixels.index_select(dim, i0) * (1 - weight) + pixels.index_select(dim, i1) * weight


def resize_crop_pixels(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, H, W] -> [3, height, width]: the reference's cover-resize (bilinear) and centre crop."""
    g = resize_crop_geometry(pixels.shape[-2], pixels.shape[-1], height, width)
    if g.resize_h * g.resize_w > LARGE_RESIZE * height * width:
        rows = _bilinear_axis(pixels.float(), 1, g.resize_h, g.top, height)
        return _bilinear_axis(rows, 2, g.resize_w, g.left, width).contiguous()
    if (g.resize_h, g.resize_w) != tuple(pixels.shape[-2:]):
        pixels = F.interpolate(
            pixels[None].float(), size=(g.resize_h, g.resize_w), mode="bilinear", align_corners=False
        )[0]
    return pixels[:, g.top : g.top + height, g.left : g.left + width].contiguous()


def _check_pixels(pixels: torch.Tensor, what: str) -> None:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[0] != 3:
        raise InputValidationError(
            f"{what} must be a tensor [3, N, H, W], got {getattr(pixels, 'shape', type(pixels).__name__)}.",
            "Convert ComfyUI IMAGE batches with host.pixels_from_comfy.",
        )
    if not torch.isfinite(pixels).all():
        raise InputValidationError(f"{what} contains NaN or infinite values.", "Check the image loader.")


class TensorReference:
    """Frames already in memory: [3, N, H, W] in [-1, 1] (N = 1 for an image) at ``fps``."""

    def __init__(self, pixels: torch.Tensor, fps: Fraction | float = 25, size: tuple[int, int] | None = None):
        _check_pixels(pixels, "reference pixels")
        if size is not None and tuple(pixels.shape[-2:]) != tuple(size):
            pixels = torch.stack([resize_crop_pixels(pixels[:, i], *size) for i in range(pixels.shape[1])], 1)
        self.pixels = pixels.float().clamp(-1, 1)
        self.num_frames = pixels.shape[1]
        self.fps = Fraction(fps).limit_denominator(1001)
        self.size = tuple(self.pixels.shape[-2:])

    def frame(self, index: int) -> torch.Tensor:
        return self.pixels[:, index]

    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"tensor|{self.fps}|".encode() + tensor_digest(self.pixels).encode()
        ).hexdigest()

    def close(self) -> None:
        pass


class VideoFileReference:
    """A source video on disk, decoded lazily at the bucket size ``size`` = (height, width)."""

    def __init__(self, path: str | Path, size: tuple[int, int]):
        from ..video.probe import probe_video
        from ..video.reader import SequentialFrameReader

        info = probe_video(path)
        self.path, self.info, self.size = Path(path), info, tuple(size)
        self.num_frames, self.fps = info.frame_count, info.fps
        geometry = resize_crop_geometry(info.height, info.width, *size)
        self._reader = SequentialFrameReader(path, resize=geometry)

    def frame(self, index: int) -> torch.Tensor:
        return uint8_to_pixels(self._reader.get(index))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"video|{self.size}|{self.fps}|{self.num_frames}|".encode())
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def close(self) -> None:
        self._reader.close()
