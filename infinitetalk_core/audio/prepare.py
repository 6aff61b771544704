"""One speaker track → the 16 kHz mono, loudness-normalised waveform the reference feeds wav2vec2.

Order and arithmetic follow the reference's ``audio_prepare_single``: ``librosa.load(sr=16000)`` (mean
over channels, then soxr "HQ" resampling with the output length fixed to ``ceil(n · 16000 / sr)``), then
pyloudnorm to −23 LUFS. librosa itself is not imported: it is only the channel mean plus one soxr call.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from ..errors import AudioInputError
from .loudness import TARGET_LUFS, normalize_loudness

logger = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = 16000
FPS = 25


def frames_for_samples(num_samples: int, sample_rate: int = MODEL_SAMPLE_RATE, fps: int = FPS) -> int:
    """Video frames (feature rows) for a waveform: ``int(n / sr * fps)`` in float arithmetic.

    This is the reference's rule and is not always ``n // 640`` (18560 samples → 28 frames, not 29).
    """
    return int(num_samples / sample_rate * fps)


def _as_float_channels(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise AudioInputError(f"audio must be [channels, samples] or [samples], got shape {list(array.shape)}",
                              "Pass one clip; stack speakers separately.")
    if np.issubdtype(array.dtype, np.integer):  # PCM integers → [-1, 1)
        array = array.astype(np.float32) / float(-np.iinfo(array.dtype).min)
    elif not np.issubdtype(array.dtype, np.floating):
        raise AudioInputError(f"audio samples must be numbers, got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


def validate_audio(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """[C, T] or [T] → [C, T] float32, or AudioInputError for empty or non-finite audio or a bad rate."""
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise AudioInputError(f"sample rate must be a positive integer, got {sample_rate!r}",
                              "Pass the rate the audio was recorded at (e.g. 16000, 44100, 48000).")
    array = _as_float_channels(samples)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise AudioInputError("the audio is empty (0 samples)", "Connect a clip that contains sound.")
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise AudioInputError(f"the audio contains {bad} NaN or infinite samples",
                              "Re-export the audio; a broken effect or conversion produced invalid samples.")
    return array


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[C, T] → [T]: channel mean in float32 (librosa.to_mono)."""
    return samples[0].copy() if samples.shape[0] == 1 else np.mean(samples, axis=0)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """[T] float32 → [ceil(T · target / orig)] float32 with soxr "HQ", as librosa.resample does."""
    if orig_rate == target_rate:
        return samples
    import soxr

    out = soxr.resample(samples, orig_rate, target_rate, quality="soxr_hq").astype(np.float32, copy=False)
    length = math.ceil(samples.shape[0] * target_rate / orig_rate)
    if out.shape[0] >= length:
        return out[:length]
    return np.pad(out, (0, length - out.shape[0]))


def prepare_waveform(samples: np.ndarray, sample_rate: int, normalize: bool = True,
                     target_lufs: float = TARGET_LUFS) -> np.ndarray:
    """[C, T] or [T] audio at any rate → [n] float32 mono at 16 kHz, loudness-normalised.

    n = ceil(T · 16000 / sample_rate). Loudness goes to ``target_lufs`` (−23, the reference's) unless
    ``normalize`` is False; silence and clips shorter than 0.4 s are returned at their own level.
    Raises AudioInputError for empty audio, NaN/inf samples or an invalid rate.
    """
    array = validate_audio(samples, sample_rate)
    mono = resample(to_mono(array), int(sample_rate))
    if normalize:
        mono = normalize_loudness(mono, MODEL_SAMPLE_RATE, target_lufs)
    return np.ascontiguousarray(mono, dtype=np.float32)
