"""Per-chunk audio windows: for video frames [start, start + frames) the 5 feature rows f−2..f+2 each.

Rows before the start clamp to row 0. Rows past the audio's last frame N−1 depend on ``padding``:

- ``"mirror"`` (default): the reference. When a chunk reaches the audio end it extends each speaker's
  features with their own tail reversed (row N → N−1, N+1 → N−2, …), so row g ≥ N reads row 2N−1−g
  (clamped to 0 when the audio is shorter than the overhang). Before a chunk reaches the end the
  reference clamps, but the only row it can then need past the end is N, where clamping and mirroring
  agree — so one rule reproduces every chunk of the reference trace. Default because the DiT was
  trained and evaluated with it; the overhanging frames are trimmed from the output anyway.
- ``"silence"``: frames past the end hear silence. Rows in ``[total_frames, features rows)`` are used
  as they are — encode the track with silence appended and pass the real length as ``total_frames`` to
  get real wav2vec2 features of silence (what the reference does for the silent parts of two-speaker
  tracks); rows beyond what ``features`` holds are zeros (kijai's wrapper pads with zeros).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputValidationError

PADDING_MODES = ("mirror", "silence")
WINDOW_OFFSETS = (-2, -1, 0, 1, 2)


def window_rows(start: int, frames: int, total_frames: int, padding: str = "mirror",
                available_rows: int | None = None) -> np.ndarray:
    """[frames, 5] int64 feature rows for frames [start, start + frames); −1 marks an all-zero row.

    ``total_frames`` = N, the audio's length in frames; ``available_rows`` (≥ N, default N) = rows the
    features tensor holds (only ``"silence"`` reads rows past N).
    """
    if padding not in PADDING_MODES:
        raise InputValidationError(f"unknown audio padding {padding!r}", f"Use one of {PADDING_MODES}.")
    if total_frames < 1 or frames < 1:  # start < 0 (a clip's continuation context) clamps to row 0
        raise InputValidationError(f"bad window request: start={start}, frames={frames}, "
                                   f"audio frames={total_frames}", "frames >= 1, audio >= 1 frame.")
    available = total_frames if available_rows is None else available_rows
    rows = np.arange(start, start + frames)[:, None] + np.array(WINDOW_OFFSETS)[None, :]
    rows = np.maximum(rows, 0)
    past = rows >= total_frames
    if padding == "mirror":
        return np.where(past, np.maximum(2 * total_frames - 1 - rows, 0), rows)
    return np.where(past & (rows >= available), -1, rows)


def _as_person_list(features) -> list[torch.Tensor]:
    if isinstance(features, torch.Tensor):
        if features.ndim == 3:
            return [features]
        if features.ndim == 4:
            return list(features)
    elif isinstance(features, Sequence) and features and all(isinstance(f, torch.Tensor) and f.ndim == 3
                                                             for f in features):
        return list(features)
    raise InputValidationError("audio features must be [T, L, C], [P, T, L, C] or a list of [T, L, C]",
                               "Pass the output of encode_audio_features (one per speaker).")


def chunk_audio_windows(features, start: int, frames: int, total_frames: int | None = None,
                        padding: str = "mirror") -> torch.Tensor:
    """Features per person ([T, L, C], a list of them, or [P, T, L, C]) → [P, frames, 5, L, C] windows.

    Global video frames [start, start + frames); ``total_frames`` = the audio's real length N (default:
    the rows of each features tensor). Output dtype/device = the features'. See the module docstring for
    ``padding``.
    """
    persons = _as_person_list(features)
    lengths = {f.shape[0] for f in persons}
    n = total_frames if total_frames is not None else min(lengths)
    if n > min(lengths):
        raise InputValidationError(f"total_frames={n} exceeds the {min(lengths)} feature rows given",
                                   "Pass the features' own length or less.")
    out = []
    for person in persons:
        rows = torch.from_numpy(window_rows(start, frames, n, padding, available_rows=person.shape[0]))
        rows = rows.to(person.device)
        window = person[rows.clamp(min=0).reshape(-1)].reshape(frames, len(WINDOW_OFFSETS), *person.shape[1:])
        if padding == "silence":
            window[rows < 0] = 0
        out.append(window)
    return torch.stack(out)
