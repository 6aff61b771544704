"""Audio in: files through imageio-ffmpeg's bundled ffmpeg, and ComfyUI ``AUDIO`` dicts.

Both return ``(samples [C, T] float32 numpy, sample_rate)`` at the source's own rate and channel count;
resampling and down-mixing happen later, in ``prepare.prepare_waveform``, exactly like the reference.
Files are decoded to 32-bit float WAV on a pipe (the WAV header tells us the rate and channel count,
so nothing has to parse ffmpeg's log), which covers wav, flac, mp3, m4a/aac, ogg/opus and the audio
track of any video container ffmpeg reads.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioInputError, FFmpegError

logger = logging.getLogger(__name__)

_WAVE_FORMAT_IEEE_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def ffmpeg_executable() -> str:
    """Path of imageio-ffmpeg's bundled ffmpeg binary (raises FFmpegError when it is unavailable)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # ImportError or imageio-ffmpeg's RuntimeError when no binary exists
        raise FFmpegError(
            f"no ffmpeg binary available ({exc})",
            "pip install imageio-ffmpeg (it ships an ffmpeg binary) or set IMAGEIO_FFMPEG_EXE.",
        ) from exc


def _ffmpeg_message(stderr: bytes, max_lines: int = 3) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return " | ".join(lines[-max_lines:]) if lines else "no message"


def _parse_float_wav(data: bytes, source: str) -> tuple[np.ndarray, int]:
    """RIFF/WAVE bytes written by ffmpeg (pcm_f32le, sizes unknown on a pipe) → ([C, T], rate)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioInputError(f"ffmpeg produced no audio for {source}", "Check that the file plays.")
    pos, channels, rate = 12, 0, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            tag, channels, rate = struct.unpack("<HHI", data[body:body + 8])
            bits = struct.unpack("<H", data[body + 14:body + 16])[0]
            if tag not in (_WAVE_FORMAT_IEEE_FLOAT, _WAVE_FORMAT_EXTENSIBLE) or bits != 32:
                raise FFmpegError(f"unexpected WAV format {tag}/{bits} bit from ffmpeg for {source}")
        elif chunk_id == b"data":
            if channels <= 0 or rate <= 0:
                raise FFmpegError(f"ffmpeg wrote audio data before its format for {source}")
            payload = data[body:]  # on a pipe ffmpeg cannot fill in the size field: read to the end
            usable = len(payload) // (4 * channels) * (4 * channels)
            samples = np.frombuffer(payload[:usable], dtype="<f4").reshape(-1, channels)
            return np.ascontiguousarray(samples.T, dtype=np.float32), int(rate)
        pos = body + size + (size & 1)
    raise AudioInputError(f"{source} has no decodable audio samples", "Check that the file plays.")


def load_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode the first audio track of any file ffmpeg reads → (samples [C, T] float32, sample_rate).

    Video containers (mp4, mov, mkv, webm, avi) give their audio track. Errors: AudioInputError for a
    missing file, a file without an audio track, or one ffmpeg cannot decode (its message quoted).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file not found: {path}", "Check the path; use an absolute path.")
    cmd = [ffmpeg_executable(), "-nostdin", "-hide_banner", "-v", "info", "-i", str(path),
           "-map", "0:a:0", "-vn", "-sn", "-dn", "-acodec", "pcm_f32le", "-f", "wav", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        full = proc.stderr.decode("utf-8", "replace")
        if "matches no streams" in full or "does not contain any stream" in full:
            raise AudioInputError(f"{path.name} has no audio track",
                                  "Use a file with sound, or extract the speech into an audio file first.")
        raise AudioInputError(f"ffmpeg cannot decode {path.name}: {_ffmpeg_message(proc.stderr)}",
                              "Use wav, flac, mp3, m4a/aac or a video with an audio track; re-export "
                              "the file if it is truncated or corrupt.")
    samples, rate = _parse_float_wav(proc.stdout, path.name)
    if samples.shape[1] == 0:
        raise AudioInputError(f"{path.name} contains an empty audio track", "Use a file with sound.")
    check_complete_decode(path.name, samples.shape[1] / rate, proc.stderr.decode("utf-8", "replace"))
    logger.debug("decoded %s: %d ch, %d Hz, %.2f s", path.name, samples.shape[0], rate,
                 samples.shape[1] / rate)
    return samples, rate


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_DECODE_ERROR = re.compile(r"error|invalid|header missing|corrupt|overread", re.IGNORECASE)


def check_complete_decode(name: str, decoded_seconds: float, log: str) -> None:
    """Refuse a file that decoded to much less than its container says (ffmpeg exits 0 on a damaged
    mp3 and simply stops early); a few decoder errors with the full length are only logged."""
    errors = [ln for ln in log.splitlines() if _DECODE_ERROR.search(ln) and not ln.lstrip().startswith("Stream")]
    match = _DURATION.search(log)
    # a container's Duration is its longest stream (video) or a bitrate guess: then only errors count
    trusted = "Estimating duration from bitrate" not in log and not re.search(r"Stream #\S+.*: Video:", log)
    if match and (trusted or errors):
        h, m, sec = match.groups()
        expected = int(h) * 3600 + int(m) * 60 + float(sec)
        if decoded_seconds < expected * 0.97 - 0.1:
            raise AudioInputError(
                f"{name} is damaged: it decoded to {decoded_seconds:.2f} s of its {expected:.2f} s"
                f" ({len(errors)} decoder errors)",
                "Re-export or re-download the file (e.g. convert it to wav in an audio editor) and load it again.",
            )
    if errors:
        logger.warning("%s: %d decoder errors (length is complete); first: %s", name, len(errors), errors[0][:200])


def audio_from_comfy(audio: Any) -> tuple[np.ndarray, int]:
    """ComfyUI ``AUDIO`` dict ``{"waveform": [B, C, T] tensor, "sample_rate": int}`` → ([C, T] float32, rate).

    Only batch size 1 is meaningful for one speaker track; a batch of several clips is rejected rather
    than guessed at.
    """
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioInputError("expected a ComfyUI AUDIO value {'waveform': [B, C, T], 'sample_rate': int}, "
                              f"got {type(audio).__name__}", "Connect the output of an audio loader node.")
    waveform = audio["waveform"]
    array = waveform.detach().float().cpu().numpy() if hasattr(waveform, "detach") else np.asarray(waveform)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise AudioInputError(f"the AUDIO input holds a batch of {array.shape[0]} clips",
                                  "Give each speaker its own input (one clip per AUDIO).")
        array = array[0]
    elif array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise AudioInputError(f"AUDIO waveform must be [B, C, T], got shape {list(np.shape(waveform))}",
                              "Connect the output of an audio loader node.")
    return np.ascontiguousarray(array, dtype=np.float32), _sample_rate(audio["sample_rate"])


def _sample_rate(value: Any) -> int:
    """A positive whole number of Hz (an AUDIO from another pack may carry anything)."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not (rate == rate and 1 <= rate <= 1_000_000 and rate == int(rate)):
        raise AudioInputError(f"the AUDIO input's sample_rate {value!r} is not a whole number of Hz",
                              "Connect the output of an audio loader node (LoadAudio).")
    return int(rate)
