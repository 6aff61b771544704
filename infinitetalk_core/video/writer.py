"""Encode frames into an H.264 mp4 with the original audio, streaming through ffmpeg's stdin.

Frames are written as raw rgb24 as they arrive (memory: one batch), encoded as H.264 yuv420p at 25 fps
and muxed with the *original* audio track (a file path, or a waveform written to a temporary float PCM
file) as AAC, trimmed or silence-padded to exactly ``frame_count / fps`` seconds. The file appears
under its final name only once ffmpeg has finished (temporary name + atomic rename).
"""

from __future__ import annotations

import logging
import errno
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch

from ..errors import FFmpegError, InputValidationError
from ..stream.job_files import disk_errors
from .ffmpeg import ffmpeg_exe, stderr_tail

log = logging.getLogger(__name__)

Waveform = Union[np.ndarray, torch.Tensor]
AudioSource = Union[str, Path, tuple[Waveform, int], None]  # path, (waveform, sample_rate) or no audio


def _waveform_to_f32le(waveform: Waveform, sample_rate: int, folder: Path) -> tuple[Path, int]:
    """[N], [C, N] or ComfyUI's [1, C, N] -> interleaved float32 file; returns (path, channels)."""
    w = (
        waveform.detach().cpu().float().numpy()
        if isinstance(waveform, torch.Tensor)
        else np.asarray(waveform)
    )
    if w.ndim == 3 and w.shape[0] == 1:
        w = w[0]
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] == 0 or w.shape[0] > 8:
        raise InputValidationError(
            f"Audio waveform has shape {tuple(waveform.shape)}; expected [N] or [C, N].",
            "Pass the original track as [channels, samples].",
        )
    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise InputValidationError(
            f"Audio sample rate {sample_rate!r} is not a positive integer.",
            "Pass the waveform's sample rate in Hz.",
        )
    fd, name = tempfile.mkstemp(suffix=".f32", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(np.ascontiguousarray(w.T, dtype="<f4").tobytes())
    return Path(name), w.shape[0]


def audio_input_args(audio: AudioSource, temp_dir: Path, temps: list[Path], start_seconds: float = 0.0) -> list[str]:
    """ffmpeg input args for ``audio`` (a waveform goes to a float PCM file in ``temp_dir``, appended to
    ``temps`` for the caller to delete), read from ``start_seconds`` on; [] for no audio."""
    if audio is None:
        return []
    seek = ["-ss", f"{start_seconds:.6f}"] if start_seconds > 0 else []
    if isinstance(audio, (str, Path)):
        if not Path(audio).is_file():
            raise InputValidationError(f"Audio file '{audio}' does not exist.", "Check the path.")
        return [*seek, "-i", str(audio)]
    waveform, rate = audio
    raw, channels = _waveform_to_f32le(waveform, rate, temp_dir)
    temps.append(raw)
    return ["-f", "f32le", "-ar", str(rate), "-ac", str(channels), *seek, "-i", str(raw)]


def audio_output_args(seconds: str) -> list[str]:
    """AAC 192k, exactly ``seconds`` long: cut at the last frame's end, silence-padded if shorter."""
    return ["-c:a", "aac", "-b:a", "192k", "-af", f"atrim=end={seconds},apad=whole_dur={seconds}"]


class Mp4Writer:
    """Stream uint8 frames [N, H, W, 3] into ``path``; ``close()`` checks the count and publishes the file."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        frame_count: int,
        audio: AudioSource = None,
        fps: Fraction | int = 25,
        crf: int = 19,
        preset: str = "medium",
        temp_dir: str | Path | None = None,
        audio_start_seconds: float = 0.0,
    ):
        self._audio_start = float(audio_start_seconds)  # a chapter's mp4 plays the audio from its start
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise InputValidationError(
                f"Video size {width}x{height} is not even; yuv420p needs even sizes.",
                "Use a width and height divisible by 2 (buckets are multiples of 16).",
            )
        if frame_count < 1:
            raise InputValidationError(f"frame_count is {frame_count}.", "Write at least one frame.")
        self.path, self.size, self.frame_count = Path(path), (height, width), frame_count
        self.written = 0
        self._temps: list[Path] = []
        self._log = tempfile.TemporaryFile()  # stderr to a file: a full pipe would deadlock the encoder
        # work files live in the temp folder, never beside the output: a failure leaves nothing in output/
        self._temp_dir = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
        with disk_errors(f"preparing '{self.path.name}'"):
            self._temp_dir.mkdir(parents=True, exist_ok=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".part.mp4", dir=self._temp_dir)
            os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._start(width, height, frame_count, audio, fps, crf, preset)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            self._cleanup()
            raise

    def _start(self, width, height, frame_count, audio, fps, crf, preset) -> None:
        seconds = f"{float(Fraction(frame_count) / Fraction(fps)):.6f}"
        args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
        args += self._audio_input(audio)
        args += [
            "-map",
            "0:v:0",
            "-c:v",
            "libx264",
            "-preset",
            preset,
            "-crf",
            str(crf),
            "-pix_fmt",
            "yuv420p",
            "-r",
            str(fps),
        ]
        if audio is not None:
            args += ["-map", "1:a:0", *audio_output_args(seconds)]
        args += ["-movflags", "+faststart", "-f", "mp4", "-y", str(self._tmp)]
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
        log.debug("ffmpeg: %s", " ".join(cmd))
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._log)

    def _audio_input(self, audio: AudioSource) -> list[str]:
        return audio_input_args(audio, self._temp_dir, self._temps, self._audio_start)

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append uint8 frames [N, H, W, 3] (or one frame [H, W, 3])."""
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (*self.size, 3):
            raise InputValidationError(
                f"Frames of dtype {frames.dtype} and shape {frames.shape[1:]} do not match the writer "
                f"({self.size[0]}x{self.size[1]}x3 uint8).",
                "Convert with frames_to_uint8 first.",
            )
        if self.written + len(frames) > self.frame_count:
            raise InputValidationError(
                f"More than the announced {self.frame_count} frames were written.",
                "Pass the final frame count to Mp4Writer.",
            )
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except (BrokenPipeError, OSError) as exc:
            message = self._stderr() or f"it exited with code {self._proc.poll()}"
            self.abort()
            raise FFmpegError(
                f"ffmpeg stopped while encoding '{self.path.name}': {message}",
                "Check the free disk space and that nothing killed ffmpeg, then run Video Combine again "
                "(the frames are kept).",
            ) from exc
        self.written += len(frames)

    def _stderr(self) -> str:
        if self._log.closed:
            return ""
        self._log.seek(0)
        return stderr_tail(self._log.read())

    def _cleanup(self) -> None:
        for p in self._temps:
            p.unlink(missing_ok=True)
        self._log.close()

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file (used on errors and early stops)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._tmp.unlink(missing_ok=True)
        self._cleanup()

    def close(self) -> Path:
        if self.written != self.frame_count:
            self.abort()
            raise InputValidationError(
                f"{self.written} frames were written, {self.frame_count} announced.",
                "Write exactly frame_count frames before close().",
            )
        try:
            self._proc.stdin.close()
        except OSError:  # ffmpeg already gone: its exit code below says why
            pass
        code = self._proc.wait()
        if code != 0:
            message = self._stderr()
            self._tmp.unlink(missing_ok=True)
            self._cleanup()
            raise FFmpegError(
                f"ffmpeg failed to encode '{self.path}': {message}",
                "Check the audio input and the free disk space.",
            )
        try:
            with disk_errors(f"saving '{self.path.name}'", target=self.path):
                _publish(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
            self._cleanup()
        return self.path

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _publish(tmp: Path, path: Path) -> None:
    """Make ``tmp`` appear as ``path`` whole or not at all: a rename on one disk; across disks a copy to
    a hidden name beside ``path`` first, so a failed copy never leaves a truncated mp4 under its name."""
    try:
        os.replace(tmp, path)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, partial = tempfile.mkstemp(prefix=".tmp-", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        shutil.copyfile(tmp, partial)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def write_mp4(
    path: str | Path,
    batches: Iterable[np.ndarray],
    frame_count: int,
    width: int,
    height: int,
    audio: AudioSource = None,
    fps: Fraction | int = 25,
    crf: int = 19,
) -> Path:
    """Encode an iterable of uint8 frame batches [n, H, W, 3] (streamed, never concatenated)."""
    with Mp4Writer(path, width, height, frame_count, audio=audio, fps=fps, crf=crf) as writer:
        for batch in batches:
            writer.write(batch)
    return Path(path)


def frames_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3], rounding as the reference ((x+1)/2*255, clip)."""
    x = ((pixels.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255)
    return x.round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def frames_to_uint8_on_device(pixels: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] on the *same device* (move only this, 4x smaller than
    float32, to the host). Bit-identical to ``frames_to_uint8``: the same float32 operations in the same order
    ((x + 1) * 127.5, clamp to [0, 255], round half to even), done ``batch`` frames at a time so the float
    temporary on the device stays at most ``batch`` frames whatever the chunk length."""
    if pixels.ndim != 4 or pixels.shape[0] != 3:
        raise InputValidationError(f"Frames of shape {tuple(pixels.shape)} are not [3, F, H, W].",
                                   "Pass decoded pixels [3, F, H, W] in [-1, 1].")
    pixels = pixels.detach()
    _, count, height, width = pixels.shape
    out = torch.empty((count, height, width, 3), dtype=torch.uint8, device=pixels.device)
    for start in range(0, count, max(1, batch)):
        x = pixels[:, start : start + batch].float() + 1.0  # a new tensor: the in-place steps below are safe
        x.mul_(127.5).clamp_(0, 255).round_()
        out[start : start + batch].copy_(x.permute(1, 2, 3, 0))  # integral values in [0, 255]: exact
    return out
