"""Color Match (post-process any frames) and Video Combine (frames + audio -> mp4 in the output folder)."""
from __future__ import annotations

import logging
import time

import torch

from ..infinitetalk_core.errors import InfiniteTalkError
from .common import CATEGORY, FRAMES_TYPE, coded_errors, comfy_audio, require
from .frames import FramesSource, ImageFrames
from .host import get_host
from .output_paths import output_name_parts
from .report_files import write_report_files

log = logging.getLogger(__name__)
BATCH = 16  # frames per write: memory stays at one batch whatever the video length
RETENTION = ("keep", "delete_after_combine")


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

        images, reference = images[..., :3], reference[..., :3]  # an alpha channel is not colour
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
                "audio": ("AUDIO", {"tooltip": "Track to mux (trimmed or padded to the video length): "
                                    "Audio Encode's audio output carries both speakers. Leave empty for a "
                                    "silent video."}),
                "job_retention": (list(RETENTION), {"default": "keep", "tooltip":
                                  "keep: the sampler's job folder stays (re-combine or repair later; about "
                                  "100-150 MB per minute of 480p video). delete_after_combine: remove it once "
                                  "this mp4 is written (re-queueing then renders again)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=""):
        """Early, for typed-in prefixes (linked ones arrive as None); combine() checks again itself."""
        if filename_prefix is None:
            return True
        try:
            output_name_parts(str(filename_prefix))
        except InfiniteTalkError as exc:
            return str(exc)
        return True

    @coded_errors("writing the mp4")
    def combine(self, fps, filename_prefix, crf, frames=None, images=None, audio=None, job_retention="keep",
                unique_id=None):
        require((frames is None) != (images is None), "Video Combine needs exactly one of frames or images.",
                "Connect the Streaming Sampler's frames output, or an IMAGE batch, but not both.")
        require(job_retention in RETENTION, f"job_retention={job_retention!r} is not one of {RETENTION}.",
                "Choose keep or delete_after_combine.")
        source: FramesSource = frames if frames is not None else ImageFrames(images, fps)
        host = get_host()
        path, subfolder = host.save_path(filename_prefix, source.width, source.height)  # refuses leaving output/
        sound = None if audio is None else _audio_source(audio)
        host.send_progress({"stage": "muxing", "chunk": 0, "chunks": 0}, unique_id)
        mux_start = time.perf_counter()  # the metadata's muxing seconds
        stream_copy = _write_video(source, frames, path, sound, crf, host.temp_dir())
        # run report next to the mp4 (before a job folder is deleted: the thumbnail reads a chunk)
        report = write_report_files(source, path, subfolder, time.perf_counter() - mux_start)
        if frames is not None and job_retention == "delete_after_combine":
            _delete_job(frames)
        host.send_progress({"stage": "done", "chunk": 0, "chunks": 0, "fraction": 1.0,
                            "stream_copy": stream_copy}, unique_id)
        ui = {"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        if report:  # a key of its own: ComfyUI's video preview reads images/animated
            ui["infinitetalk_report"] = report
        return {"ui": ui, "result": (host.wrap_video_file(str(path)), str(path))}


def _write_video(source, frames, path, sound, crf: int, temp_dir) -> bool:
    """Write the mp4: join the job's live segments by stream copy when they are exactly this encode (crf
    LIVE_CRF, 25 fps, covering every frame), else encode the frames. True when it was a stream copy."""
    from ..infinitetalk_core.video.concat import concat_streams
    from ..infinitetalk_core.video.writer import Mp4Writer

    segments = _live_segments(frames, crf)
    start = getattr(frames, "start_frame", 0) / 25  # a chapter: its audio starts at the chapter's start
    if segments:
        log.info("Video Combine: joining %d live segments by stream copy (no re-encode)", len(segments))
        concat_streams(segments, path, source.frame_count, sound, source.fps, temp_dir,
                       audio_start_seconds=start, frame_counts=[r.frames for r in frames.job.manifest.chunks])
        return True
    log.info("Video Combine: encoding %d frames at crf %d", source.frame_count, crf)
    with Mp4Writer(path, source.width, source.height, source.frame_count, audio=sound, fps=source.fps,
                   crf=crf, temp_dir=temp_dir, audio_start_seconds=start) as writer:
        for batch in source.iter_uint8(BATCH):
            writer.write(batch)
    return False


def _live_segments(frames, crf: int) -> list | None:
    """The job's live segments when they cover a frames handle's output exactly at crf LIVE_CRF, 25 fps."""
    from ..infinitetalk_core.video.live import LIVE_CRF, LIVE_FPS, LiveOutput

    job = getattr(frames, "job", None)  # one job (chapters: re-encode)
    if job is None or crf != LIVE_CRF or frames.fps != LIVE_FPS:
        return None
    return LiveOutput(job.path).segments_for(job)


def _audio_source(audio):
    waveform, rate = comfy_audio(audio)
    return (waveform[0] if waveform.ndim == 3 else waveform, rate)


def _delete_job(frames) -> None:
    """delete_after_combine: the mp4 is written; a job folder that cannot go is only a warning (failing
    now would make a retry write the same mp4 twice)."""
    delete = getattr(frames, "delete_job", None)
    if delete is None:
        return  # frames from another source: nothing of ours to delete
    try:
        delete()
    except InfiniteTalkError as exc:
        log.warning("job folder kept: %s", exc)
