"""ITU-R BS.1770 integrated loudness and the reference's −23 LUFS normalisation.

The reference normalises every speaker track with pyloudnorm 0.2.0 (``Meter(16000)``,
``integrated_loudness``, ``normalize.loudness``). This is the same algorithm written against numpy/scipy
only, including pyloudnorm's numerical habits, so the gain matches to the last bit in practice:

- K-weighting = high shelf (+4 dB, Q 1/√2, 1500 Hz) then high pass (Q 0.5, 38 Hz), RBJ-cookbook biquads
  designed for the actual sample rate, each stage run in float64 by ``lfilter`` and stored back in the
  input's dtype (pyloudnorm filters in place into a copy of the input);
- 400 ms blocks with 75 % overlap, ``round((T − 0.4) / 0.1) + 1`` blocks, bounds truncated by ``int``;
- absolute gate −70 LUFS, relative gate −10 LU below the absolutely gated mean.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.signal

logger = logging.getLogger(__name__)

BLOCK_SECONDS = 0.4
BLOCK_OVERLAP = 0.75
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
TARGET_LUFS = -23.0
# The reference skips normalisation when |loudness| > 100 (silence gives -inf).
UNMEASURABLE_LUFS = 100.0


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ-cookbook biquad coefficients (b, a), normalised by a0."""
    big_a = 10 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * (fc / rate)
    alpha = np.sin(w0) / (2.0 * q)
    cos_w0 = np.cos(w0)
    if kind == "high_shelf":
        root = 2 * np.sqrt(big_a) * alpha
        b = [big_a * ((big_a + 1) + (big_a - 1) * cos_w0 + root),
             -2 * big_a * ((big_a - 1) + (big_a + 1) * cos_w0),
             big_a * ((big_a + 1) + (big_a - 1) * cos_w0 - root)]
        a = [(big_a + 1) - (big_a - 1) * cos_w0 + root,
             2 * ((big_a - 1) - (big_a + 1) * cos_w0),
             (big_a + 1) - (big_a - 1) * cos_w0 - root]
    elif kind == "high_pass":
        b = [(1 + cos_w0) / 2, -(1 + cos_w0), (1 + cos_w0) / 2]
        a = [1 + alpha, -2 * cos_w0, 1 - alpha]
    else:
        raise ValueError(f"unknown biquad kind {kind!r}")
    return np.array(b) / a[0], np.array(a) / a[0]


def k_weighting(samples: np.ndarray, rate: float) -> np.ndarray:
    """[n] or [n, ch] → same shape and dtype: the BS.1770 K-weighting pre-filter."""
    out = np.array(samples, copy=True)
    for kind, gain_db, q, fc in (("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0), ("high_pass", 0.0, 0.5, 38.0)):
        b, a = _biquad(kind, gain_db, q, fc, rate)
        out[...] = scipy.signal.lfilter(b, a, out, axis=0)  # float64 math, stored in the input dtype
    return out


def measurable(num_samples: int, rate: float) -> bool:
    """True when the clip holds at least one 400 ms gating block (pyloudnorm raises otherwise)."""
    return not num_samples < BLOCK_SECONDS * rate


def integrated_loudness(samples: np.ndarray, rate: float) -> float:
    """[n] or [n, ch] float samples → gated integrated loudness in LUFS (−inf for digital silence).

    Raises ValueError for clips shorter than one 400 ms block, like pyloudnorm.
    """
    data = np.asarray(samples)
    if not np.issubdtype(data.dtype, np.floating):
        raise ValueError("integrated_loudness needs floating-point samples")
    if not measurable(data.shape[0], rate):
        raise ValueError(f"audio must be at least {BLOCK_SECONDS} s long to measure loudness")
    weighted = k_weighting(data.reshape(data.shape[0], -1), rate)
    channels = weighted.shape[1]
    channel_gains = np.array([1.0, 1.0, 1.0, 1.41, 1.41])[:channels]

    step = 1.0 - BLOCK_OVERLAP
    num_blocks = int(np.round((weighted.shape[0] / rate - BLOCK_SECONDS) / (BLOCK_SECONDS * step))) + 1
    power = np.zeros((channels, num_blocks))
    for j in range(num_blocks):
        lo = int(BLOCK_SECONDS * (j * step) * rate)
        hi = int(BLOCK_SECONDS * (j * step + 1) * rate)
        for ch in range(channels):
            # Sum in the sample dtype (pairwise, like np.sum on the slice), scale in float64.
            power[ch, j] = (1.0 / (BLOCK_SECONDS * rate)) * np.sum(np.square(weighted[lo:hi, ch]))

    weighted_power = channel_gains @ power
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(weighted_power)
    above_absolute = block_lufs >= ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return float("-inf")
    relative_gate = -0.691 + 10.0 * np.log10(channel_gains @ power[:, above_absolute].mean(axis=1))
    relative_gate += RELATIVE_GATE_LU
    gated = (block_lufs > relative_gate) & (block_lufs > ABSOLUTE_GATE_LUFS)
    if not gated.any():
        return float("-inf")
    with np.errstate(divide="ignore"):
        return float(-0.691 + 10.0 * np.log10(channel_gains @ power[:, gated].mean(axis=1)))


def normalize_loudness(samples: np.ndarray, rate: float, target_lufs: float = TARGET_LUFS) -> np.ndarray:
    """[n] float samples → [n] same dtype, scaled to ``target_lufs`` integrated loudness.

    Left unchanged (the same array) when the loudness cannot be measured: digital silence or anything
    quieter than ±100 LUFS (the reference's rule), or a clip shorter than one 400 ms block (the reference
    raises there; a short clip is legitimate input for us). No peak limiting, as in the reference.
    """
    if not measurable(samples.shape[0], rate):
        logger.info("audio shorter than %.1f s: loudness not normalised", BLOCK_SECONDS)
        return samples
    loudness = integrated_loudness(samples, rate)
    if not abs(loudness) <= UNMEASURABLE_LUFS:
        logger.info("loudness %.1f LUFS is not measurable: audio left unchanged", loudness)
        return samples
    gain = np.power(10.0, (target_lufs - loudness) / 20.0)
    # numpy 1.x (the reference's) multiplies a float32 array by a float64 scalar in float32.
    return samples * np.asarray(gain, dtype=samples.dtype)
