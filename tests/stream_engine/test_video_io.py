"""mp4 writer (exact length, original audio), probing and bounded frame reading through ffmpeg."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from infinitetalk_core.errors import FFmpegError, InputValidationError
from infinitetalk_core.video import Mp4Writer, probe_video, read_video_frames, write_mp4
from infinitetalk_core.video.probe import decoded_audio_seconds, decoded_frame_count, parse_rate
from infinitetalk_core.video.reader import SequentialFrameReader, iter_video_frames


def _frames(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame i is flat grey 4·i (identifiable after lossy coding)."""
    return (np.arange(n, dtype=np.uint8)[:, None, None, None] * 4).repeat(h, 1).repeat(w, 2).repeat(3, 3)


@pytest.fixture(scope="module")
def clip_30000_1001(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "ntsc.mp4"
    write_mp4(path, [_frames(40)], 40, 48, 32, fps=Fraction(30000, 1001))
    return path


def test_writer_trims_and_pads_audio_to_the_frame_count(tmp_path):
    rate = 22050
    long_wave = np.random.default_rng(0).uniform(-0.3, 0.3, (2, rate * 3)).astype(np.float32)
    out = write_mp4(tmp_path / "long.mp4", [_frames(10), _frames(15)], 25, 48, 32, audio=(long_wave, rate))
    assert decoded_frame_count(out) == 25
    assert decoded_audio_seconds(out) == pytest.approx(1.0, abs=1e-3)
    short = write_mp4(tmp_path / "short.mp4", [_frames(50)], 50, 48, 32, audio=(long_wave[0, :rate], rate))
    assert decoded_audio_seconds(short) == pytest.approx(2.0, abs=1e-3)
    # an audio file path works too (the container is re-read, not the normalised 16 kHz track)
    from_file = write_mp4(tmp_path / "file.mp4", [_frames(30)], 30, 48, 32, audio=str(out))
    assert decoded_audio_seconds(from_file) == pytest.approx(1.2, abs=1e-3)


def test_writer_refuses_wrong_counts_and_sizes(tmp_path):
    with pytest.raises(InputValidationError, match="even"):
        Mp4Writer(tmp_path / "x.mp4", 33, 32, 5)
    writer = Mp4Writer(tmp_path / "x.mp4", 48, 32, 5)
    with pytest.raises(InputValidationError, match="do not match"):
        writer.write(np.zeros((1, 16, 16, 3), np.uint8))
    writer.write(_frames(3))
    with pytest.raises(InputValidationError, match="3 frames were written"):
        writer.close()
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_probe_reports_fraction_fps_and_count(clip_30000_1001):
    info = probe_video(clip_30000_1001)
    assert info.fps == Fraction(30000, 1001)
    assert (info.frame_count, info.width, info.height) == (40, 48, 32)
    assert info.duration == pytest.approx(40 * 1001 / 30000, abs=0.01)


@pytest.mark.parametrize(
    "text, rate",
    [
        ("29.97", Fraction(30000, 1001)),
        ("23.98", Fraction(24000, 1001)),
        ("25", Fraction(25)),
        ("12.5", Fraction(25, 2)),
        ("30k", Fraction(30000)),
    ],
)
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


def test_read_frames_by_index(clip_30000_1001):
    frames = read_video_frames(clip_30000_1001, [39, 0, 20, 20])
    assert frames.shape == (4, 32, 48, 3)
    assert np.abs(frames[:, 16, 24, 0].astype(int) - [156, 0, 80, 80]).max() <= 3
    with pytest.raises(InputValidationError, match="40 decodable frames"):
        read_video_frames(clip_30000_1001, [40])


def test_sequential_reader_goes_forward_and_back(clip_30000_1001):
    reader = SequentialFrameReader(clip_30000_1001, size=(16, 16))
    values = [int(reader.get(i)[8, 8, 0]) for i in (3, 10, 10, 2, 39)]
    reader.close()
    assert np.abs(np.array(values) - [12, 40, 40, 8, 156]).max() <= 3
    assert sum(1 for _ in iter_video_frames(clip_30000_1001, stop=7)) == 7


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(FFmpegError):
        probe_video(bad)
    with pytest.raises(InputValidationError, match="does not exist"):
        probe_video(tmp_path / "missing.mp4")
