"""Color Match (post-process any frames) and Video Combine (frames + audio -> mp4 in the output folder)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .common import CATEGORY, FRAMES_TYPE, coded_errors, comfy_audio, require
from .frames import FramesSource, ImageFrames
from .host import get_host

BATCH = 16  # frames per write: memory stays at one batch whatever the video length


class InfiniteTalkColorMatch:
    DESCRIPTION = (
        "Matches the colours of every frame to a reference image (e.g. the source frame) to remove drift. "
        "The Streaming Sampler already does this inside the loop; use this node on any other frames."
    )
    CATEGORY = CATEGORY
    FUNCTION = "match"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The colour-corrected frames.",)

    @classmethod
    def INPUT_TYPES(cls):
        from ..infinitetalk_core.color import COLOR_METHODS

        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames to correct (any batch size)."}),
                "reference": ("IMAGE", {"tooltip": "Colour reference. One frame (or a few, pooled) for "
                                        "all frames; exactly as many frames as images: frame i for frame i."}),
                "method": (list(COLOR_METHODS), {"default": "lab", "tooltip":
                           "lab: the reference's CIELAB mean/std transfer; histogram: per-channel "
                           "histogram matching; mkl: Monge-Kantorovich linear transfer."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = unchanged, 1 = full correction (reference default)."}),
            },
        }

    @coded_errors("colour matching")
    def match(self, images, reference, method, strength):
        from ..infinitetalk_core.color import match_colors

        per_frame = reference.shape[0] == images.shape[0] and images.shape[0] > 1
        out = torch.empty_like(images)
        for i in range(0, images.shape[0], BATCH):  # bounded working memory for long batches
            ref = reference[i:i + BATCH] if per_frame else reference
            out[i:i + BATCH] = match_colors(images[i:i + BATCH], ref, method, strength, per_frame)
        return (out,)


class InfiniteTalkVideoCombine:
    DESCRIPTION = (
        "Encodes frames (the Streaming Sampler's frames handle, streamed from disk, or any IMAGE batch) "
        "with the audio into an H.264/AAC mp4 in the output folder, exactly as long as the frames."
    )
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    OUTPUT_NODE = True
    RETURN_TYPES = ("VIDEO", "STRING")
    RETURN_NAMES = ("video", "path")
    OUTPUT_TOOLTIPS = ("The mp4 as a native VIDEO (SaveVideo, GetVideoComponents accept it).",
                       "Absolute path of the written mp4.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01, "tooltip":
                        "Frame rate of IMAGE input. A frames handle keeps its own rate (25, InfiniteTalk's)."}),
                "filename_prefix": ("STRING", {"default": "InfiniteTalk/talk", "tooltip":
                                    "Output name below ComfyUI/output; a counter is appended."}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 51, "tooltip":
                        "H.264 quality: lower is better and larger (17-23 is typical)."}),
            },
            "optional": {
                "frames": (FRAMES_TYPE, {"tooltip": "The Streaming Sampler's frames (read from its job "
                                         "folder batch by batch, never all in RAM)."}),
                "images": ("IMAGE", {"tooltip": "Any IMAGE batch instead of a frames handle."}),
                "audio": ("AUDIO", {"tooltip": "Track to mux (trimmed or padded to the video length). "
                                    "Leave empty for a silent video."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix="", **_):
        if ".." in Path(str(filename_prefix)).parts:
            return "E_INPUT_VALIDATION: filename_prefix must stay inside the output folder. Fix: remove '..'."
        return True

    @coded_errors("writing the mp4")
    def combine(self, fps, filename_prefix, crf, frames=None, images=None, audio=None):
        from ..infinitetalk_core.video.writer import Mp4Writer

        require((frames is None) != (images is None), "Video Combine needs exactly one of frames or images.",
                "Connect the Streaming Sampler's frames output, or an IMAGE batch, but not both.")
        source: FramesSource = frames if frames is not None else ImageFrames(images, fps)
        path, subfolder = _next_output_path(get_host().output_dir(), filename_prefix)
        sound = None if audio is None else _audio_source(audio)
        with Mp4Writer(path, source.width, source.height, source.frame_count, audio=sound,
                       fps=source.fps, crf=crf) as writer:
            for batch in source.iter_uint8(BATCH):
                writer.write(batch)
        ui = {"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        return {"ui": ui, "result": (get_host().wrap_video_file(str(path)), str(path))}


def _audio_source(audio):
    waveform, rate = comfy_audio(audio)
    return (waveform[0] if waveform.ndim == 3 else waveform, rate)


def _next_output_path(root: Path, prefix: str) -> tuple[Path, str]:
    """``root/<sub>/<name>_00001.mp4`` with the next free counter (ComfyUI's naming scheme)."""
    prefix = prefix.strip().strip("/") or "InfiniteTalk/talk"
    sub, _, name = prefix.rpartition("/")
    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(name) + r"_(\d{5})\.mp4$")
    used = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return folder / f"{name}_{max(used, default=0) + 1:05d}.mp4", sub
