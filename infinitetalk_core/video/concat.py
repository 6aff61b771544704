"""Join H.264 files (live .ts segments, chapter .mp4s) into one mp4 by stream copy, with fresh audio.

Why: re-encoding an hour of video takes longer than copying its packets by a wide margin; the inputs were
encoded with Video Combine's own settings (see live.py), so their streams concatenate as they are. The
video goes through ffmpeg's concat demuxer with ``-c copy``; the audio is encoded again (AAC 192k) from
the original track, trimmed or padded to exactly ``frame_count / fps`` (writer.py's helpers). The file
appears at ``out_path`` only once complete (temporary file in ``temp_dir``, then an atomic publish).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

from ..errors import FFmpegError, InputValidationError
from ..stream.job_files import disk_errors
from .ffmpeg import ffmpeg_exe, stderr_tail
from .writer import AudioSource, _publish, audio_input_args, audio_output_args

log = logging.getLogger(__name__)


def _concat_list(video_files: list[Path], seconds: list[float] | None) -> str:
    lines = ["ffconcat version 1.0"]
    for i, f in enumerate(video_files):
        path = str(Path(f).resolve()).replace("'", "'\\''")  # the list's own quoting
        lines.append(f"file '{path}'")
        if seconds is not None:  # a .ts file's own duration counts its longer (AAC-padded) audio
            lines.append(f"duration {seconds[i]:.6f}")
    return "\n".join(lines) + "\n"


def concat_streams(video_files: list[Path], out_path: str | Path, frame_count: int, audio: AudioSource = None,
                   fps: Fraction | int = 25, temp_dir: str | Path | None = None,
                   audio_start_seconds: float = 0.0, frame_counts: list[int] | None = None) -> Path:
    """Concatenate ``video_files`` (same codec settings and size) into ``out_path`` without re-encoding
    the video; mux ``audio`` from ``audio_start_seconds`` on, exactly ``frame_count / fps`` long.
    frame_counts: each file's video frames (pass them for .ts segments, whose container duration
    includes the audio's encoder padding; an mp4's own duration is exact)."""
    files = [Path(f) for f in video_files]
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing or frame_count < 1:
        raise InputValidationError(f"Cannot join {len(files)} video files (missing: {missing or 'none'}, "
                                   f"{frame_count} frames).", "Pass existing video files and a frame count >= 1.")
    out_path = Path(out_path)
    work = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
    total = f"{float(Fraction(frame_count) / Fraction(fps)):.6f}"
    temps: list[Path] = []
    with disk_errors(f"preparing '{out_path.name}'"):
        work.mkdir(parents=True, exist_ok=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        listing, tmp = _temp_file(work, ".ffconcat"), _temp_file(work, ".part.mp4")
    temps += [listing, tmp]
    try:
        seconds = None if frame_counts is None else [float(Fraction(n) / Fraction(fps)) for n in frame_counts]
        listing.write_text(_concat_list(files, seconds))
        args = ["-f", "concat", "-safe", "0", "-i", str(listing)]
        args += audio_input_args(audio, work, temps, audio_start_seconds)
        # video from 0 s, as an encode starts (the first file may start later: AAC priming before it)
        args += ["-map", "0:v:0", "-c:v", "copy", "-bsf:v", "setts=pts=PTS-STARTPTS:dts=DTS-STARTPTS",
                 "-frames:v", str(frame_count)]
        if audio is not None:
            args += ["-map", "1:a:0", *audio_output_args(total)]
        _run([*args, "-movflags", "+faststart", "-f", "mp4", "-y", str(tmp)], out_path)
        with disk_errors(f"saving '{out_path.name}'", target=out_path):
            _publish(tmp, out_path)
    finally:
        for f in temps:
            f.unlink(missing_ok=True)
    return out_path


def _temp_file(folder: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


def _run(args: list[str], out_path: Path) -> None:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    log.debug("ffmpeg: %s", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg failed to join the video parts into '{out_path.name}': "
                          f"{stderr_tail(proc.stderr)}",
                          "Check the free disk space and that every part was made with the same settings "
                          "(or re-encode: Video Combine with another crf).")
