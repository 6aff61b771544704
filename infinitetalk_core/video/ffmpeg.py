"""Where ffmpeg is and how to run it with errors that carry ffmpeg's own last lines.

We use imageio-ffmpeg's bundled static binary (it has libx264 and aac) through plain subprocess pipes;
imageio-ffmpeg ships no ffprobe, so probing parses ``ffmpeg -i`` output (see probe.py).
"""

from __future__ import annotations

import logging
import os
import subprocess

from ..errors import FFmpegError

log = logging.getLogger(__name__)


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $INFINITETALK_FFMPEG if set, else imageio-ffmpeg's bundled one."""
    override = os.environ.get("INFINITETALK_FFMPEG")
    if override:
        return override
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise FFmpegError(
            "imageio-ffmpeg is not installed, so there is no ffmpeg to read or write video.",
            "pip install imageio-ffmpeg (it bundles a static ffmpeg).",
        ) from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def stderr_tail(text: bytes | str, lines: int = 8) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def run_ffmpeg(args: list[str], what: str) -> subprocess.CompletedProcess:
    """Run ffmpeg to completion; raise FFmpegError naming ``what`` with ffmpeg's last lines."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    log.debug("ffmpeg: %s", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise FFmpegError(
            f"ffmpeg failed to {what}: {stderr_tail(proc.stderr)}",
            "Check that the file exists and is a readable audio/video file.",
        )
    return proc
