"""Probe a video with the bundled ffmpeg: frame rate as a fraction, frame count, size, duration.

imageio-ffmpeg ships no ffprobe, so the stream header printed by ``ffmpeg -i`` is parsed, and the frame
count comes from remuxing the video stream to the null muxer (packets are counted, nothing is decoded).
ffmpeg prints rates rounded to 2 decimals (29.97, 23.98, 59.94): those are snapped to the NTSC
fractions 30000/1001, 24000/1001, 60000/1001; other rates become the nearest fraction with a
denominator up to 1001.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..errors import FFmpegError, InputValidationError
from .ffmpeg import ffmpeg_exe, run_ffmpeg, stderr_tail

_NTSC = (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001), Fraction(120000, 1001))


@dataclass(frozen=True)
class VideoInfo:
    """What the streaming engine needs to know about a source video (size as decoded, rotation applied)."""

    path: str
    fps: Fraction
    frame_count: int
    width: int
    height: int
    duration: float  # seconds, from the container header

    def time_of(self, index: int) -> float:
        """Presentation time (s) of frame ``index`` assuming a constant frame rate."""
        return float(index / self.fps)


def parse_rate(text: str) -> Fraction:
    """'29.97' -> 30000/1001, '25' -> 25, '12.5' -> 25/2, '30k' -> 30000."""
    value = float(text[:-1]) * 1000 if text.endswith("k") else float(text)
    for ntsc in _NTSC:
        if abs(value - float(ntsc)) < 0.006:
            return ntsc
    return Fraction(value).limit_denominator(1001)


_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<rest>.*)")
_SIZE = re.compile(r",\s*(?P<w>\d{2,5})x(?P<h>\d{2,5})[\s,\[]")
_FPS = re.compile(r"(?P<v>[\d.]+k?) fps")
_TBR = re.compile(r"(?P<v>[\d.]+k?) tbr")
_DURATION = re.compile(r"Duration: (?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)")
_ROTATION = re.compile(r"rotation of (?P<deg>-?[\d.]+) degrees")
_FRAMES = re.compile(r"frame=\s*(?P<n>\d+)")


def _header(path: str) -> str:
    # `ffmpeg -i x` with no output exits 1 by design; the header on stderr is what we want.
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    text = proc.stderr.decode("utf-8", "replace")
    if "Stream #" not in text:
        raise FFmpegError(
            f"ffmpeg cannot read '{path}': {stderr_tail(text)}",
            "Pass a video file ffmpeg can decode (mp4, mov, mkv, webm, ...).",
        )
    return text


def count_frames(path: str) -> int:
    """Number of video packets (= frames) in the first video stream, without decoding."""
    proc = run_ffmpeg(
        ["-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"], f"count frames of {path}"
    )
    found = _FRAMES.findall(proc.stderr.decode("utf-8", "replace"))
    if not found:
        raise FFmpegError(
            f"ffmpeg reported no frame count for '{path}'.", "Re-encode the video (e.g. to H.264)."
        )
    return int(found[-1])


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, frame count, decoded size and duration of the first video stream of ``path``."""
    path = str(path)
    if not Path(path).is_file():
        raise InputValidationError(f"Video file '{path}' does not exist.", "Check the path.")
    header = _header(path)
    stream = _STREAM.search(header)
    if stream is None:
        raise InputValidationError(f"'{path}' has no video stream.", "Pass a video, not an audio-only file.")
    rest = stream.group("rest")
    size = _SIZE.search(rest)
    rate = _FPS.search(rest) or _TBR.search(rest)
    if size is None or rate is None:
        raise FFmpegError(
            f"Could not read size/frame rate of '{path}' from: {rest}",
            "Re-encode the video to H.264 mp4 with a constant frame rate.",
        )
    width, height = int(size.group("w")), int(size.group("h"))
    rotation = _ROTATION.search(header)
    if rotation and round(abs(float(rotation.group("deg")))) % 180 == 90:
        width, height = height, width  # ffmpeg auto-rotates when decoding
    d = _DURATION.search(header)
    duration = int(d.group("h")) * 3600 + int(d.group("m")) * 60 + float(d.group("s")) if d else 0.0
    return VideoInfo(path, parse_rate(rate.group("v")), count_frames(path), width, height, duration)


def decoded_audio_seconds(path: str | Path, sample_rate: int = 48000) -> float:
    """Duration of the first audio stream as decoded (samples / rate after resampling to ``sample_rate``)."""
    proc = run_ffmpeg(
        ["-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(sample_rate), "-f", "s16le", "-"],
        f"decode the audio of {path}",
    )
    return len(proc.stdout) / 2 / sample_rate


def decoded_frame_count(path: str | Path) -> int:
    """Frames of the first video stream counted by decoding it (not from the container header)."""
    proc = run_ffmpeg(
        ["-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-"], f"decode {path}"
    )
    found = _FRAMES.findall(proc.stderr.decode("utf-8", "replace"))
    return int(found[-1]) if found else 0
