"""Live HLS output of a job folder (video/live.py) and the stream-copy join (video/concat.py)."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import FFmpegError
from infinitetalk_core.stream.job import JobDirectory, JobFingerprint
from infinitetalk_core.video import live as live_module
from infinitetalk_core.video.concat import concat_streams
from infinitetalk_core.video.ffmpeg import ffmpeg_exe
from infinitetalk_core.video.live import LiveOutput, segment_name
from infinitetalk_core.video.probe import decoded_audio_seconds, decoded_frame_count
from infinitetalk_core.video.writer import write_mp4

SIZES = [17, 12, 12, 9]  # 50 frames = 2 s
LAYOUT = {"num_chunks": len(SIZES), "output_frames": sum(SIZES), "height": 64, "width": 64, "fps": 25}
PRINT = JobFingerprint({"audio": "a", "parameters": "p"})
RATE = 16000
AAC_SLACK = 0.25  # each segment's own AAC priming/padding (<= 2 AAC frames at 16 kHz) is in the playlist


def _audio(seconds: float = 3.0) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.stack([np.sin(2 * np.pi * 220 * t)] * 2).astype(np.float32) * 0.3, RATE


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _commit(job, live, index, seed=0):
    frames = _frames(SIZES[index], seed * 10 + index)
    job.commit_chunk(index, frames, {"x": torch.zeros(1)})
    live.add(job, index, frames)


def _decode(playlist) -> tuple[int, float]:
    """(frames, audio seconds) of a playlist. ffmpeg treats an open EVENT playlist as live and waits for
    more segments, so a snapshot with ENDLIST is decoded (the segments and their timestamps are the same)."""
    text = playlist.read_text()
    snapshot = playlist.with_name(".check.m3u8")
    snapshot.write_text(text if "#EXT-X-ENDLIST" in text else text + "#EXT-X-ENDLIST\n")
    try:
        err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(snapshot), "-map", "0:v", "-fps_mode",
                              "passthrough", "-f", "null", "-"], capture_output=True, text=True, timeout=60).stderr
        pcm = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(snapshot), "-map", "0:a", "-af",
                              "aresample=async=1:min_hard_comp=0.01:first_pts=0", "-ac", "1", "-ar", str(RATE),
                              "-f", "s16le", "-"], capture_output=True, timeout=60).stdout
    finally:
        snapshot.unlink()
    return int(re.findall(r"frame=\s*(\d+)", err)[-1]), len(pcm) / 2 / RATE


def _listed(live) -> list[str]:
    return [line for line in live.playlist_path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.fixture
def job(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    yield job
    job.close()


def test_the_playlist_plays_exactly_the_committed_chunks(job):
    live = LiveOutput(job.path, _audio())
    live.sync(job)
    assert _listed(live) == []
    for i in range(len(SIZES)):
        _commit(job, live, i)
        frames, seconds = _decode(live.playlist_path)
        assert frames == job.frames_done
        assert abs(seconds - job.frames_done / 25) <= AAC_SLACK
        assert ("#EXT-X-ENDLIST" in live.playlist_path.read_text()) == job.is_complete
    assert decoded_frame_count(live.latest_path) == SIZES[-1]  # the newest chunk, for browsers without HLS
    assert _listed(live) == [segment_name(r) for r in job.manifest.chunks]


def test_no_partial_segment_is_ever_listed(job, monkeypatch):
    live = LiveOutput(job.path)
    _commit(job, live, 0)
    real = live._write_playlist
    monkeypatch.setattr(live, "_write_playlist", lambda *a: (_ for _ in ()).throw(OSError(28, "No space")))
    _commit(job, live, 1)  # "crash" after the segment is written, before the playlist: never raises
    assert live.failed and _listed(live) == [segment_name(job.manifest.chunks[0])]
    (live.folder / ".tmp-half.ts").write_bytes(b"\x47" * 100)  # a temp file left by a killed writer
    monkeypatch.setattr(live, "_write_playlist", real)
    _commit(job, live, 2)  # stopped for the rest of the run
    assert len(_listed(live)) == 1
    fresh = LiveOutput(job.path)
    fresh.sync(job)
    assert _listed(fresh) == [segment_name(r) for r in job.manifest.chunks]
    assert all((fresh.folder / name).is_file() for name in _listed(fresh))
    assert not list(fresh.folder.glob(".tmp-*"))


def test_an_ffmpeg_failure_stops_live_output_but_not_the_render(job, monkeypatch):
    live = LiveOutput(job.path)

    def fail(*_):
        raise FFmpegError("ffmpeg failed writing the live preview: boom", "fix")

    monkeypatch.setattr(live_module, "encode_segment", fail)
    _commit(job, live, 0)
    _commit(job, live, 1)
    assert live.failed and job.chunks_done == 2


def test_resume_reroll_and_repair_keep_the_playlist_consistent(tmp_path):
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)
    live = LiveOutput(job.path, _audio())
    for i in range(3):
        _commit(job, live, i)
    job.close()
    job = JobDirectory.open(tmp_path / "job", PRINT, LAYOUT)  # resume
    live = LiveOutput(job.path, _audio())
    (live.folder / segment_name(job.manifest.chunks[1])).unlink()  # lost: made again from the chunk file
    live.sync(job)
    assert _listed(live) == [segment_name(r) for r in job.manifest.chunks]
    assert all((live.folder / name).is_file() for name in _listed(live))
    old = set(_listed(live))
    job.truncate(1)  # a re-roll from chunk 2
    live.sync(job)
    assert _listed(live) == [segment_name(job.manifest.chunks[0])]
    assert sorted(p.name for p in live.folder.glob("*.ts")) == _listed(live)  # stale segments deleted
    for i in range(1, len(SIZES)):
        _commit(job, live, i, seed=1)  # other frames: other segment names
    assert not (set(_listed(live)[1:]) & old) and "#EXT-X-ENDLIST" in live.playlist_path.read_text()
    frames, seconds = _decode(live.playlist_path)
    assert frames == 50 and abs(seconds - 2.0) <= AAC_SLACK
    assert live.segments_for(job) == [live.folder / name for name in _listed(live)]
    job.close()


def test_segments_do_not_cover_an_incomplete_job(job):
    live = LiveOutput(job.path)
    _commit(job, live, 0)
    assert live.segments_for(job) is None


@pytest.mark.parametrize("kind", ["ts", "mp4"])
def test_concat_streams_matches_a_re_encode(job, tmp_path, kind):
    live = LiveOutput(job.path, _audio())
    for i in range(len(SIZES)):
        _commit(job, live, i)
    parts = live.segments_for(job)
    if kind == "mp4":  # chapter mp4s, as Video Combine writes them
        parts = [write_mp4(tmp_path / f"part{i}.mp4", [job.read_chunk(r)], r.frames, 64, 64, audio=_audio(1.0))
                 for i, r in enumerate(job.manifest.chunks)]
    counts = [r.frames for r in job.manifest.chunks] if kind == "ts" else None
    out = concat_streams(parts, tmp_path / "out" / "joined.mp4", 50, _audio(), temp_dir=tmp_path / "tmp",
                         audio_start_seconds=0.5, frame_counts=counts)
    encoded = job.write_mp4(tmp_path / "encoded.mp4", audio=_audio())
    assert decoded_frame_count(out) == decoded_frame_count(encoded) == 50
    assert abs(decoded_audio_seconds(out) - decoded_audio_seconds(encoded)) < 0.03
    assert not list((tmp_path / "tmp").iterdir()) and sorted(p.name for p in out.parent.iterdir()) == ["joined.mp4"]


def test_concat_streams_leaves_nothing_behind_on_failure(tmp_path):
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"not a video")
    with pytest.raises(FFmpegError, match="join"):
        concat_streams([bad], tmp_path / "out.mp4", 10, temp_dir=tmp_path / "tmp")
    assert not (tmp_path / "out.mp4").exists() and not list((tmp_path / "tmp").iterdir())
