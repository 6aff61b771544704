"""Two speakers: overlapping (``para``) or one after the other (``add``), as the reference's
``audio_prepare_multi`` does, on prepared 16 kHz waveforms.

Padding is done on the waveform before encoding, so a silent stretch gets real wav2vec2 features of
silence (kijai's wrapper pads the features with zeros instead — a divergence we do not copy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputValidationError

SPEAKER_MODES = ("para", "add")


@dataclass(frozen=True)
class SpeakerTracks:
    """Per-speaker tracks of equal length (each encoded separately) and their mix (for muxing)."""

    tracks: tuple[np.ndarray, ...]
    mix: np.ndarray
    mode: str


def combine_speakers(first: np.ndarray, second: np.ndarray | None, mode: str = "para") -> SpeakerTracks:
    """Two [n1], [n2] mono waveforms (same rate) → SpeakerTracks with two tracks of equal length.

    - ``para``: both speak over the same timeline; the shorter track is padded with silence at the end
      (the reference requires equal lengths and crashes otherwise); mix = sum. Length max(n1, n2).
    - ``add``: speaker 1 then speaker 2; track 1 = [first, silence(n2)], track 2 = [silence(n1), second];
      mix = concatenation. Length n1 + n2.

    ``second=None`` is a silent second speaker of the first's length (the reference's "None" person).
    """
    if mode not in SPEAKER_MODES:
        raise InputValidationError(f"unknown speaker mode {mode!r}", f"Use one of {SPEAKER_MODES}.")
    first = np.asarray(first, dtype=np.float32)
    second = np.zeros_like(first) if second is None else np.asarray(second, dtype=np.float32)
    if first.ndim != 1 or second.ndim != 1:
        raise InputValidationError("combine_speakers takes two mono [n] waveforms",
                                   "Run prepare_waveform on each speaker first.")
    if mode == "para":
        length = max(first.shape[0], second.shape[0])
        track1 = np.pad(first, (0, length - first.shape[0]))
        track2 = np.pad(second, (0, length - second.shape[0]))
        return SpeakerTracks((track1, track2), track1 + track2, mode)
    track1 = np.concatenate([first, np.zeros_like(second)])
    track2 = np.concatenate([np.zeros_like(first), second])
    return SpeakerTracks((track1, track2), np.concatenate([first, second]), mode)
