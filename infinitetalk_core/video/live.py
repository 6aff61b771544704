"""Live output of a render: an HLS playlist in the job folder that grows by one segment per chunk.

Layout inside the job folder::

    live/index.m3u8              HLS (EVENT) playlist; #EXT-X-ENDLIST once the job is complete
    live/00012-<content8>.ts     chunk 12's kept frames + that time range of the audio (MPEG-TS)
    live/latest.m4v              the newest segment remuxed to mp4 (browsers without native HLS; .m4v:
                                 served as video/mp4, and never taken for a finished *.mp4)

A segment is encoded exactly as Video Combine encodes the final mp4 (libx264 preset ``LIVE_PRESET`` =
Mp4Writer's default "medium", crf ``LIVE_CRF``, yuv420p, 25 fps): the same encoder settings give the same
SPS/PPS, so the segments concatenate by stream copy into the final mp4 (``concat.concat_streams``) and
into chapter mp4s re-encoded by Video Combine. "medium" costs about a second per chunk at 480p on a
desktop CPU, small next to a chunk's sampling. The content hash in a segment's name makes a re-rolled or
repaired chunk a different file. Segments and the playlist are written whole (temp + fsync + rename)
and the playlist only ever names segments already on disk. Any failure here logs one warning and turns
live output off for the run: it never fails the render.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import FFmpegError
from ..stream.job_files import fsync_dir, write_atomic
from .ffmpeg import ffmpeg_exe, stderr_tail

log = logging.getLogger(__name__)

LIVE_DIR = "live"
PLAYLIST = "index.m3u8"
LATEST = "latest.m4v"
LIVE_CRF = 19  # Mp4Writer's default: stream copy gives what a default Video Combine would encode
LIVE_PRESET = "medium"  # Mp4Writer's default preset: identical encoder settings -> concatenable streams
LIVE_FPS = 25


def segment_name(record) -> str:
    """``00012-1a2b3c4d.ts``: the chunk index and the first 8 hex of its frames' content hash."""
    return f"{record.index:05d}-{record.content[:8]}.ts"


def _audio_array(audio) -> tuple[np.ndarray, int] | None:
    """(waveform [C, N] / [1, C, N] / [N], rate) -> (float32 [C, N], rate); None stays None."""
    if audio is None:
        return None
    waveform, rate = audio
    w = waveform.detach().cpu().float().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    w = w[0] if w.ndim == 3 else w
    return (w[None] if w.ndim == 1 else w).astype(np.float32), int(rate)


class LiveOutput:
    """The live HLS output of one job folder (see the module docstring)."""

    def __init__(self, job_path: str | Path, audio=None, audio_start_frame: int = 0):
        self.folder = Path(job_path) / LIVE_DIR
        self.audio = _audio_array(audio)
        self.audio_start_frame = int(audio_start_frame)
        self.failed = False

    @property
    def playlist_path(self) -> Path:
        return self.folder / PLAYLIST

    @property
    def latest_path(self) -> Path:
        return self.folder / LATEST

    def add(self, job, index: int, frames: np.ndarray) -> None:
        """After ``job.commit_chunk(index, frames, ...)``: write that chunk's segment, then the playlist."""
        self._guarded(self._add, job, index, frames)

    def sync(self, job) -> None:
        """Make the playlist list exactly the manifest's committed chunks (re-creating missing segments from
        the chunk files, deleting stale ones); ENDLIST once the job is complete."""
        self._guarded(self._sync, job)

    def _guarded(self, fn, *args) -> None:
        if self.failed:
            return
        try:
            fn(*args)
        except Exception as exc:  # live output is a preview: it must never fail the render
            self.failed = True
            log.warning("live preview stopped for this run (the render goes on): %s", exc)

    def _add(self, job, index: int, frames: np.ndarray) -> None:
        records = list(job.manifest.chunks)
        if index < len(records) and records[index].index == index:
            self._write_segment(records, index, frames)
        self._sync(job, latest=index)

    def _sync(self, job, latest: int | None = None) -> None:
        records = list(job.manifest.chunks)
        self.folder.mkdir(exist_ok=True)  # the job folder exists: never parents
        for i, rec in enumerate(records):
            if not (self.folder / segment_name(rec)).is_file():
                self._write_segment(records, i, job.read_chunk(rec))
                latest = i
        self._write_playlist(records, job.is_complete)
        if latest is not None:
            self._write_latest(self.folder / segment_name(records[latest]))
        self._remove_stale({segment_name(r) for r in records})

    def segments_for(self, job) -> list[Path] | None:
        """The ordered segment files when they cover the complete job's output frames exactly, else None."""
        records = list(job.manifest.chunks)
        paths = [self.folder / segment_name(r) for r in records]
        frames = sum(r.frames for r in records)
        if not records or not job.is_complete or frames != job.output_frames:
            return None
        return paths if all(p.is_file() for p in paths) else None

    # -- files -------------------------------------------------------------------------------------------
    def _write_segment(self, records: list, i: int, frames: np.ndarray) -> None:
        start = sum(r.frames for r in records[:i])
        self.folder.mkdir(exist_ok=True)
        data = encode_segment(frames, start, self._audio_slice(start, len(frames)))
        write_atomic(self.folder / segment_name(records[i]), data)

    def _audio_slice(self, start: int, count: int) -> tuple[np.ndarray, int] | None:
        """This chunk's audio: global time (audio_start_frame + start) / 25 s on, padded with silence."""
        if self.audio is None:
            return None
        wave, rate = self.audio
        first = round((self.audio_start_frame + start) * rate / LIVE_FPS)
        n = round(count * rate / LIVE_FPS)
        part = wave[:, first:first + n]
        return np.pad(part, ((0, 0), (0, n - part.shape[1]))), rate

    def _write_playlist(self, records: list, complete: bool) -> None:
        longest = max((r.frames for r in records), default=1) / LIVE_FPS
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}",
                 "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:EVENT"]
        for rec in records:
            lines += [f"#EXTINF:{rec.frames / LIVE_FPS:.3f},", segment_name(rec)]
        if complete:
            lines.append("#EXT-X-ENDLIST")
        write_atomic(self.playlist_path, ("\n".join(lines) + "\n").encode())

    def _write_latest(self, segment: Path) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".m4v", dir=self.folder)
        os.close(fd)
        try:
            _ffmpeg(["-i", str(segment), "-c", "copy", "-movflags", "+faststart", "-f", "mp4", "-y", tmp])
            os.replace(tmp, self.latest_path)
            fsync_dir(self.folder)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _remove_stale(self, named: set[str]) -> None:
        for f in self.folder.iterdir():
            if (f.suffix == ".ts" and f.name not in named) or f.name.startswith(".tmp-"):
                f.unlink(missing_ok=True)


def encode_segment(frames: np.ndarray, start_frame: int, audio: tuple[np.ndarray, int] | None) -> bytes:
    """uint8 [n, H, W, 3] (+ float32 audio [C, N] of exactly those frames) -> MPEG-TS bytes whose
    timestamps start at start_frame / 25 s (continuous across a playlist's segments)."""
    n, h, w, _ = frames.shape
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(LIVE_FPS), "-i", "-"]
    with tempfile.TemporaryDirectory(prefix="infinitetalk-live-") as work:
        if audio is not None:
            raw = Path(work) / "audio.f32"
            raw.write_bytes(np.ascontiguousarray(audio[0].T, dtype="<f4").tobytes())
            args += ["-f", "f32le", "-ar", str(audio[1]), "-ac", str(audio[0].shape[0]), "-i", str(raw)]
        args += ["-map", "0:v:0", "-c:v", "libx264", "-preset", LIVE_PRESET, "-crf", str(LIVE_CRF),
                 "-pix_fmt", "yuv420p", "-r", str(LIVE_FPS)]
        if audio is not None:
            args += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "192k"]
        args += ["-output_ts_offset", f"{start_frame / LIVE_FPS:.6f}", "-f", "mpegts", "-"]
        return _ffmpeg(args, np.ascontiguousarray(frames).tobytes())


def _ffmpeg(args: list[str], stdin: bytes | None = None) -> bytes:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg failed writing the live preview: {stderr_tail(proc.stderr)}",
                          "Check the free disk space; the render itself is not affected.")
    return proc.stdout
