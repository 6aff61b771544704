"""Frame sources Video Combine can stream: a finished job directory (the sampler's output) or an IMAGE.

Why a handle and not an IMAGE batch: 2000 frames at 640x640 are 9.8 GB as ComfyUI's float32 IMAGE,
and ComfyUI keeps node outputs cached in RAM. The Streaming Sampler therefore returns this small
handle to its job directory (uint8 chunks on disk); Video Combine reads it one chunk at a time.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
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


_DELETED_EPOCH: dict[str | None, int] = {}  # sampler node id -> job folders deleted after a combine


def job_epoch(node_id: str | None) -> int:
    """Changes when Video Combine deleted the job folder a sampler node returned (its IS_CHANGED)."""
    return _DELETED_EPOCH.get(node_id, 0)


@dataclass
class JobFrames:
    """What flows on an INFINITETALK_FRAMES socket: a finished (or partial) job directory."""

    job: Any  # infinitetalk_core.stream.job.JobDirectory
    fps_value: Fraction = Fraction(25)
    producer: str | None = None  # the sampler node's id

    @property
    def path(self) -> str:
        return str(self.job.path)

    @property
    def jobs(self) -> list:
        return [self.job]

    @property
    def start_frame(self) -> int:
        """Global frame of the first frame (a chapter's start: its audio starts there too)."""
        chapter = self.job.manifest.layout.get("chapter") or {}
        return int(chapter.get("start_frame", 0))

    @property
    def frame_count(self) -> int:
        return int(self.job.output_frames)

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
        from ..infinitetalk_core.errors import JobDamagedError

        try:
            if not Path(self.job.path).is_dir():
                raise JobDamagedError(f"The job folder '{Path(self.job.path).name}' no longer exists (deleted "
                                      "after an earlier combine, or by hand).",
                                      "Queue the workflow again: the Streaming Sampler renders it again.")
            for chunk in self.job.iter_frame_batches():  # one chunk at a time, each checked against its hash
                for i in range(0, len(chunk), batch):
                    yield np.ascontiguousarray(chunk[i:i + batch])
        except JobDamagedError:
            self._invalidate()  # ComfyUI's cache must not hand this handle out again
            raise

    def _invalidate(self) -> None:
        _DELETED_EPOCH[self.producer] = _DELETED_EPOCH.get(self.producer, 0) + 1

    def last_frames(self, count: int) -> torch.Tensor:
        """The last ``count`` frames as an IMAGE [count, H, W, 3] (previews, the optional IMAGE output)."""
        frames = self.job.last_output_frames(count)
        return torch.from_numpy(np.array(frames, dtype=np.float32)).div(255)

    def delete_job(self) -> None:
        """Remove the job folder (Video Combine, job_retention = delete_after_combine); the sampler that
        made it runs again next time (see ``job_epoch``) instead of handing out a deleted folder."""
        from ..infinitetalk_core.stream.job_files import remove_job_folder

        self._invalidate()
        remove_job_folder(self.job.path)

    def __repr__(self) -> str:  # shown in ComfyUI's debug output
        return f"JobFrames({self.path!r}, {self.frame_count} frames, {self.width}x{self.height})"


@dataclass
class ChapterFrames:
    """An INFINITETALK_FRAMES handle over several chapter jobs, played one after the other."""

    parts: list  # JobFrames, in order

    @property
    def path(self) -> str:
        return self.parts[0].path

    @property
    def jobs(self) -> list:
        return [part.job for part in self.parts]

    @property
    def start_frame(self) -> int:
        return self.parts[0].start_frame

    @property
    def frame_count(self) -> int:
        return sum(part.frame_count for part in self.parts)

    @property
    def height(self) -> int:
        return self.parts[0].height

    @property
    def width(self) -> int:
        return self.parts[0].width

    @property
    def fps(self) -> Fraction:
        return self.parts[0].fps

    def iter_uint8(self, batch: int) -> Iterator[np.ndarray]:
        for part in self.parts:
            yield from part.iter_uint8(batch)

    def last_frames(self, count: int) -> torch.Tensor:
        """The last ``count`` frames (of the last chapter: previews, the IMAGE output)."""
        return self.parts[-1].last_frames(count)

    def delete_job(self) -> None:
        """Remove every chapter's job folder (Video Combine, delete_after_combine)."""
        for part in self.parts:
            part.delete_job()

    def __repr__(self) -> str:
        return f"ChapterFrames({len(self.parts)} chapters, {self.frame_count} frames, {self.width}x{self.height})"

