"""The two-speaker track to mux, built from the ORIGINAL waveforms at the original sample rate.

The features are computed on 16 kHz prepared tracks (``combine_speakers``); the sound that goes into the
mp4 should not be that 16 kHz, loudness-normalised mono copy. ``mux_mix`` rebuilds the same timeline
from the untouched sources:

- the output rate is speaker 1's rate; speaker 2 is resampled to it (soxr HQ) when the rates differ;
- channels: equal counts are kept; a mono speaker is broadcast to the other's channels (mono + stereo →
  stereo); two different multi-channel layouts are both down-mixed to mono;
- ``para``: both start at 0 and are summed; the timeline is ``max(n1, n2)`` 16 kHz samples;
- ``add``: speaker 2 starts where speaker 1's 16 kHz track ends, ``n1 / 16000`` seconds, exactly the
  offset ``combine_speakers`` gives its features; the timeline is ``n1 + n2`` 16 kHz samples
  (``n_k = ceil(T_k · 16000 / rate_k)``, the prepared length);
- with ``num_frames`` the result is cut (or padded with silence) to ``num_frames / fps`` seconds, the
  video's length; otherwise it covers the whole 16 kHz timeline;
- clipping guard: when the peak of the result exceeds 1.0 it is scaled down to a peak of 1.0, otherwise
  the levels are left exactly as the sources had them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputValidationError
from .prepare import FPS, MODEL_SAMPLE_RATE, resample, validate_audio
from .speakers import SPEAKER_MODES


@dataclass(frozen=True)
class MuxTrack:
    """``waveform`` [C, T] float32 at ``sample_rate``; ``offsets`` = each speaker's start in samples."""

    waveform: np.ndarray
    sample_rate: int
    offsets: tuple[int, int]
    gain: float = 1.0

    @property
    def seconds(self) -> float:
        return self.waveform.shape[1] / self.sample_rate


def prepared_length(num_samples: int, sample_rate: int) -> int:
    """Samples of a track once resampled to 16 kHz (``prepare.resample``'s ``ceil`` rule)."""
    return math.ceil(num_samples * MODEL_SAMPLE_RATE / sample_rate)


def _match_channels(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c1, c2 = first.shape[0], second.shape[0]
    if c1 == c2:
        return first, second
    if c1 == 1:
        return np.repeat(first, c2, axis=0), second
    if c2 == 1:
        return first, np.repeat(second, c1, axis=0)
    return first.mean(0, keepdims=True), second.mean(0, keepdims=True)


def _resample_channels(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    if orig_rate == target_rate:
        return samples
    return np.stack([resample(np.ascontiguousarray(ch), orig_rate, target_rate) for ch in samples])


def _place(out: np.ndarray, track: np.ndarray, offset: int) -> None:
    """Add ``track`` [C, t] into ``out`` [C, T] from ``offset`` on, cut at the end of ``out``."""
    room = max(0, out.shape[1] - offset)
    out[:, offset:offset + min(room, track.shape[1])] += track[:, :room]


def mux_mix(first: np.ndarray, first_rate: int, second: np.ndarray, second_rate: int, mode: str = "para",
            num_frames: int | None = None, fps: int = FPS) -> MuxTrack:
    """Two speakers' original audio ([C, T] or [T], any rates) → the track to mux (see module doc)."""
    if mode not in SPEAKER_MODES:
        raise InputValidationError(f"Unknown speaker mode {mode!r}.",
                                   f"Use one of {', '.join(SPEAKER_MODES)}.")
    first = validate_audio(first, first_rate)
    second = validate_audio(second, second_rate)
    rate = int(first_rate)
    n1, n2 = prepared_length(first.shape[1], first_rate), prepared_length(second.shape[1], second_rate)
    second = _resample_channels(second, int(second_rate), rate)
    first, second = _match_channels(first, second)

    def at_rate(samples_16k: int) -> int:
        return int(round(samples_16k * rate / MODEL_SAMPLE_RATE))

    if mode == "para":
        timeline, offset2 = max(n1, n2), 0
    else:
        timeline, offset2 = n1 + n2, at_rate(n1)
    length = at_rate(timeline) if num_frames is None else int(round(num_frames * rate / fps))
    out = np.zeros((first.shape[0], length), dtype=np.float32)
    _place(out, first, 0)
    _place(out, second, offset2)
    peak = float(np.abs(out).max()) if out.size else 0.0
    gain = 1.0 / peak if peak > 1.0 else 1.0
    if gain != 1.0:
        out *= np.float32(gain)
    return MuxTrack(out, rate, (0, offset2), gain)
