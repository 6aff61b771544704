"""Reference Sampler node: where each chunk's reference frame comes from (an image, or a source video).

The node only describes the source; which frame conditions which chunk is decided by the core
(``stream.references``) once the sampler knows the chunk plan. A VIDEO from ComfyUI's LoadVideo is read
from its file, and only the frames actually needed are decoded (memory: those frames, not the video).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from ..infinitetalk_core.stream.references import OVERFLOW_MODES, REFERENCE_STRATEGIES
from .common import CATEGORY, REFERENCES_TYPE, coded_errors, require


@dataclass
class ReferenceSource:
    """What flows on an INFINITETALK_REFERENCES socket: the source, not yet resized.

    ``images``: IMAGE [F, H, W, 3] (an image or decoded frames) or None; ``video_path``: a video file
    decoded lazily; ``fps``: the source's frame rate; ``strategy``/``overflow``: see core references.
    """

    frame_count: int
    height: int
    width: int
    fps: Fraction
    strategy: str
    overflow: str
    images: torch.Tensor | None = None
    video_path: str | None = None

    def open(self, size: tuple[int, int]):
        """The core's ``ReferenceFrames`` at the bucket ``size`` = (height, width)."""
        from ..infinitetalk_core.stream.host import pixels_from_comfy
        from ..infinitetalk_core.stream.sources import TensorReference, VideoFileReference

        if self.video_path is not None:
            return VideoFileReference(self.video_path, size)
        return TensorReference(pixels_from_comfy(self.images[..., :3]), self.fps, size)

    def first_frame(self) -> torch.Tensor:
        """IMAGE [1, H, W, 3] of source frame 0 (for the node's preview output)."""
        if self.images is not None:
            return self.images[:1, ..., :3].float()
        from ..infinitetalk_core.video.reader import read_video_frames

        return torch.from_numpy(read_video_frames(self.video_path, [0])).float().div(255)


def _video_source(video: Any) -> tuple[str | None, torch.Tensor | None, Fraction]:
    """ComfyUI VIDEO -> (file path or None, frames or None, fps)."""
    source = getattr(video, "get_stream_source", lambda: None)()
    if isinstance(source, str):
        from ..infinitetalk_core.video.probe import probe_video

        return source, None, Fraction(probe_video(source).fps)
    components = video.get_components()  # in-memory VIDEO (e.g. CreateVideo): frames are already in RAM
    return None, components.images, Fraction(components.frame_rate)


class InfiniteTalkReferenceSampler:
    DESCRIPTION = (
        "Describes the reference frames: one image for image-to-video, or a source video (VIDEO, or an "
        "IMAGE batch with its fps) for dubbing, where each chunk is conditioned on the source frame at "
        "that chunk's time, whatever the source frame rate."
    )
    CATEGORY = CATEGORY
    FUNCTION = "describe"
    RETURN_TYPES = (REFERENCES_TYPE, "IMAGE")
    RETURN_NAMES = ("references", "first_frame")
    OUTPUT_TOOLTIPS = ("Reference source for the Streaming Sampler.", "The source's first frame.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "strategy": (list(REFERENCE_STRATEGIES), {"default": "chunk_start", "tooltip":
                             "Which source frame conditions a chunk: chunk_start (the reference's choice), "
                             "chunk_center, or first_frame for every chunk."}),
                "overflow": (list(OVERFLOW_MODES), {"default": "hold", "tooltip":
                             "When the audio is longer than the video: hold the last frame (reference), "
                             "loop the video, or pingpong (forwards, then backwards)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001, "tooltip":
                        "Frame rate of an IMAGE batch (a VIDEO input knows its own rate)."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "A single image (image-to-video) or a batch of video frames."}),
                "video": ("VIDEO", {"tooltip": "A source video (LoadVideo) for dubbing; frames are read "
                                    "from the file only when a chunk needs them."}),
            },
        }

    @coded_errors("preparing the reference frames")
    def describe(self, strategy, overflow, fps, image=None, video=None):
        require((image is None) != (video is None), "Reference Sampler needs exactly one of image or video.",
                "Connect a LoadImage (image) or a LoadVideo (video), not both.")
        path, frames, rate = (None, image, Fraction(fps).limit_denominator(1001)) if video is None \
            else _video_source(video)
        if frames is not None:
            count, height, width = (int(s) for s in frames.shape[:3])
        else:
            from ..infinitetalk_core.video.probe import probe_video

            info = probe_video(path)
            count, height, width = info.frame_count, info.height, info.width
        require(count >= 1, "The reference source has no frames.", "Use an image or a non-empty video.")
        ref = ReferenceSource(count, height, width, rate, strategy, overflow, frames, path)
        return (ref, ref.first_frame())
