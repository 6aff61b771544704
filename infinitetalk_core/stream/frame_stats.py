"""Frame-difference statistics of a committed chunk (drift and seams at a glance, see run_report.py).

``inside``: the mean |frame[t+1] - frame[t]| over the chunk's kept frames; ``seam``: the mean |first
kept frame - the previous chunk's last kept frame|. A seam far above the inside mean is a visible jump.
Both in uint8 levels, measured on every 4th pixel of a copy: the frames themselves are never touched.
"""

from __future__ import annotations

import numpy as np

STRIDE = 4  # every 4th row and column: cheap, and plenty for a mean


def _small(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames[:, ::STRIDE, ::STRIDE], dtype=np.int16)


def frame_differences(frames: np.ndarray, previous_last: np.ndarray | None) -> dict:
    """{"inside_diff": float | None, "seam_diff": float | None} of uint8 frames [n, H, W, 3];
    ``previous_last``: the previous chunk's last kept frame [H, W, 3] (None for the first chunk)."""
    small = _small(frames)
    inside = float(np.abs(np.diff(small, axis=0)).mean()) if len(small) > 1 else None
    seam = None
    if previous_last is not None and len(small) and previous_last.shape == frames.shape[1:]:
        seam = float(np.abs(small[0] - _small(previous_last[None])[0]).mean())
    return {"inside_diff": None if inside is None else round(inside, 4),
            "seam_diff": None if seam is None else round(seam, 4)}
