"""A small memory of recently read source frames in front of a ``ReferenceFrames`` source.

A video source decodes forwards; asking for a frame behind its position restarts the decoder from the
first frame. Consecutive chunks overlap by the context frames, and a run also asks for its reference
and colour frames between the clips, so without this memory a dub would decode the video from the
start at every chunk (quadratic in its length). Frames are kept by index, least recently used first out,
in two memories: single frames (reference and colour frames: a handful) and clip frames (the overlap of
consecutive chunks), so reading a long clip never pushes out the colour reference.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch

from .plan import FPS


SINGLE_FRAMES = 4  # reference frame, colour reference, and the previous chunk's ones


class _LRU:
    def __init__(self, capacity: int):
        self.capacity, self.items = max(1, capacity), OrderedDict()

    def get(self, index: int) -> torch.Tensor | None:
        if index in self.items:
            self.items.move_to_end(index)
            return self.items[index]
        return None

    def put(self, index: int, frame: torch.Tensor) -> None:
        self.items[index] = frame
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)


class RecentFrames:
    """``frame(i)`` and ``clip(indices)`` of ``source``, serving recently read frames from memory
    (``capacity`` clip frames plus a few single frames)."""

    def __init__(self, source, capacity: int):
        self.source = source
        self._single, self._clip = _LRU(SINGLE_FRAMES), _LRU(capacity)

    @classmethod
    def for_run(cls, source, context_frames: int, extra: int = 4) -> "RecentFrames":
        """Room for the source frames two chunks share (M context frames at the source's rate) + a few."""
        overlap = math.ceil(context_frames * max(float(source.fps), FPS) / FPS) + 1
        return cls(source, overlap + extra)

    @property
    def num_frames(self) -> int:
        return self.source.num_frames

    @property
    def fps(self):
        return self.source.fps

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.source.size)

    def _read(self, index: int, memory: _LRU) -> torch.Tensor:
        frame = self._single.get(index)
        frame = self._clip.get(index) if frame is None else frame
        if frame is None:
            frame = self.source.frame(index)
        memory.put(index, frame)
        return frame

    def frame(self, index: int) -> torch.Tensor:
        """[3, H, W] float32 in [-1, 1] (the source's own tensor: do not modify it)."""
        return self._read(index, self._single)

    def clip(self, indices: Sequence[int], device=None, hold: Sequence[int] = ()) -> torch.Tensor:
        """[3, len(indices), H, W] float32 on ``device``: the frames read in increasing index order; those
        in ``hold`` go to the single-frame memory (a reference frame asked for right after)."""
        frames = {i: self._read(i, self._single if i in hold else self._clip).to(device)
                  for i in sorted(set(indices))}
        return torch.stack([frames[i] for i in indices], dim=1)
