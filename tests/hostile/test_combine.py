"""C. Video Combine: filename_prefix stays inside output/ (checked by combine() itself, not only by
VALIDATE_INPUTS); a failed encode leaves no partial mp4 and no temporary audio in output/."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import hostile_harness as hh

BAD_PREFIXES = {
    "up_two": "../../evil",
    "up_one": "../evil",
    "absolute": "/tmp/hostile_abs_prefix/x",
    "inner_escape": "a/../../b",
    "drive": "C:\\x",
    "backslash_escape": "..\\..\\evil",
    "nul": "talk\x00evil",
    "only_dotdot": "..",
}


def _images(frames: int = 4):
    return torch.rand(frames, 32, 32, 3, generator=torch.Generator().manual_seed(3))


def _combine(world, prefix, **kw):
    kw.setdefault("images", _images())
    return world.nodes["InfiniteTalkVideoCombine"]().combine(25.0, prefix, 23, **kw)


@pytest.mark.parametrize("prefix", list(BAD_PREFIXES.values()), ids=list(BAD_PREFIXES))
def test_bad_prefix_is_refused_by_combine_itself(prefix, world, box, tmp_path):
    outside = Path("/tmp/hostile_abs_prefix")
    before = hh.snapshot(tmp_path)
    with pytest.raises(Exception) as info:
        _combine(world, prefix)
    escaped = outside.exists()
    if escaped:
        import shutil

        shutil.rmtree(outside)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", "filename_prefix")
    assert not escaped, "combine wrote below /tmp/hostile_abs_prefix"
    changed = hh.tree_diff(before, hh.snapshot(tmp_path))
    assert not changed, f"filename_prefix={prefix!r} changed the disk:\n{changed}"


@pytest.mark.parametrize("prefix", list(BAD_PREFIXES.values())[:4], ids=list(BAD_PREFIXES)[:4])
def test_validate_inputs_agrees(prefix, pack):
    cls = pack.NODE_CLASS_MAPPINGS["InfiniteTalkVideoCombine"]
    verdict = cls.VALIDATE_INPUTS(filename_prefix=prefix)
    assert verdict is not True, f"VALIDATE_INPUTS accepts {prefix!r}"
    hh.assert_coded(verdict, "E_INPUT_VALIDATION", "filename_prefix")


@pytest.mark.parametrize("prefix", ["", "   ", "\t", "InfiniteTalk/ok talk"], ids=["empty", "spaces", "tab", "nested"])
def test_blank_or_nested_prefix_writes_inside_output(prefix, world, box, tmp_path):
    result = _combine(world, prefix)
    path = Path(result["result"][1]).resolve()
    assert path.is_file() and box.output.resolve() in path.parents
    assert path.stat().st_size > 0


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".part.mp4", ".f32")) or ".part" in p.name or p.name.startswith(".tmp"))


class _Frames:
    """A FramesSource that misbehaves while the encoder runs (ffmpeg killed, or a source read error)."""

    def __init__(self, fault: str, box):
        self.width, self.height, self.frame_count, self.fault, self.box = 32, 32, 48, fault, box
        from fractions import Fraction

        self.fps = Fraction(25)
        self.seen_in_output: list[str] = []

    def iter_uint8(self, batch):
        import numpy as np

        for i in range(0, self.frame_count, batch):
            if i == 16:
                self.seen_in_output = [p for p in _leftovers(self.box.output) if p.endswith(".f32")]
                if self.fault == "kill_ffmpeg":
                    for pid in _ffmpeg_children():
                        os.kill(pid, signal.SIGKILL)
                elif self.fault == "read_error":
                    raise OSError(5, "Input/output error", "chunk file")
            yield np.full((min(batch, self.frame_count - i), 32, 32, 3), 128, np.uint8)


def _ffmpeg_children() -> list[int]:
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            name = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except OSError:
            continue
        if int(fields[1]) == me and "ffmpeg" in name:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.parametrize("fault", ["kill_ffmpeg", "read_error"])
def test_failed_encode_leaves_nothing_in_output(fault, world, box):
    frames = _Frames(fault, box)
    with pytest.raises(Exception) as info:
        _combine(world, "hostile/fail", images=None, frames=frames, audio=hh.speech(1.9))
    hh.assert_coded(info.value, ("E_FFMPEG", "E_DISK", "E_GENERATION"), "ffmpeg", "encod", "read", "input")
    assert not _leftovers(box.output), f"left in output/: {_leftovers(box.output)}"
    assert not list(box.output.rglob("*.mp4")), "a (partial) mp4 was left under its final name"
    assert not frames.seen_in_output, f"temporary audio was written into output/: {frames.seen_in_output}"


@pytest.mark.parametrize("audio", ["nan", "zero_rate", "empty"])
def test_bad_audio_for_combine_is_coded_and_leaves_nothing(audio, world, box):
    wave = hh.speech(0.2)
    if audio == "nan":
        wave["waveform"][..., 100:200] = float("nan")
    elif audio == "zero_rate":
        wave["sample_rate"] = 0
    else:
        wave["waveform"] = torch.zeros(1, 1, 0)
    try:
        result = _combine(world, "hostile/audio", audio=wave)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, ("E_AUDIO", "E_INPUT_VALIDATION", "E_FFMPEG"), "audio", "sample")
        assert not _leftovers(box.output) and not list(box.output.rglob("*.mp4"))
    else:
        assert audio == "empty", f"{audio} audio was muxed without an error: {result['result'][1]}"
