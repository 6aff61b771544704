"""What a streaming run hands out per chunk (``ChunkResult``) and carries from chunk to chunk
(``StreamState``, persisted in job folders so a resumed run continues bit-identically)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .plan import ChunkPlan


@dataclass
class StreamState:
    """What the next chunk needs from the previous ones. ``context_pixels``: [3, M, H, W] float32 CPU
    (the last M frames after colour correction), None before the first chunk."""

    next_chunk: int = 0
    context_pixels: torch.Tensor | None = None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"next_chunk": torch.tensor([self.next_chunk], dtype=torch.int64)}
        if self.context_pixels is not None:
            out["context_pixels"] = self.context_pixels
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "StreamState":
        return cls(int(tensors["next_chunk"][0]), tensors.get("context_pixels"))


@dataclass(frozen=True)
class ChunkResult:
    """One finished chunk.

    ``pixels_uint8``: the kept frames as written to a job, uint8 [n, H, W, 3] on the CPU, converted on the
    device (``frames_uint8()`` gives the numpy view). ``frames``: the kept frames [3, n, H, W] float32 CPU in
    [-1, 1] (after colour), exactly as decoded while the result still holds its float frames (they stay on
    the compute device until asked for, so a GPU run moves only uint8 and the context tail to the host);
    once a job writer has called ``release_float_frames()`` (``render.commit_chunks`` does, so the next
    chunk does not sample beside them) ``frames`` is derived from ``pixels_uint8`` (u / 127.5 - 1: within
    half a uint8 step of the decoded values).
    """

    chunk: ChunkPlan
    num_chunks: int
    pixels_uint8: torch.Tensor
    reference_index: int
    state: StreamState  # the state after this chunk (persist it to resume)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: vae (+conditioning), dit, colour, dub, post
    pass_calls: int = 0  # guidance-pass evaluations the sampler asked for (steps x passes)
    skipped_calls: int = 0  # of those, answered by the step cache without the transformer blocks
    refine_calls: int = 0  # extra pass calls of the context refinement before this chunk (experimental)
    # the kept float frames [3, n, H, W] on the compute device until released (a one-slot holder: frozen)
    float_frames: list = field(default_factory=list, repr=False, compare=False)
    # seconds per stage (encoding_references, refining_context, sampling, decoding, colour, post): reports
    stages: dict[str, float] = field(default_factory=dict)
    # what colour matching changed in the kept frames, in uint8 levels: {"mean_abs", "mean_rgb"} (None: off)
    colour: dict | None = None

    @property
    def index(self) -> int:
        return self.chunk.index

    def stats(self) -> dict:
        """What the job manifest records about this chunk (``ChunkRecord.stats``): informational only."""
        return {"timings": {k: round(v, 4) for k, v in self.stages.items()}, "colour": self.colour,
                "pass_calls": self.pass_calls, "skipped_calls": self.skipped_calls,
                "refine_calls": self.refine_calls}

    @property
    def frames(self) -> torch.Tensor:
        """[3, n, H, W] float32 CPU in [-1, 1]: exact until ``release_float_frames()``, then uint8-derived."""
        if self.float_frames:
            return self.float_frames[0].to("cpu", torch.float32)
        return self.pixels_uint8.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)

    def release_float_frames(self) -> None:
        """Drop the float frames (device memory on a GPU run); ``frames`` is uint8-derived afterwards."""
        self.float_frames.clear()

    def frames_uint8(self) -> np.ndarray:
        """[n, H, W, 3] uint8 ((x+1)/2·255, rounded, clipped; bit-identical to ``frames_to_uint8(frames)``
        of the float frames)."""
        return self.pixels_uint8.numpy()
