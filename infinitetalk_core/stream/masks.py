"""Speaker masks (``ref_target_masks``): which latent pixels belong to speaker 1, speaker 2, background.

Built in source-pixel coordinates, then taken through the same cover-resize + centre-crop as the
reference image (nearest), nearest-resized to the latent grid and binarised, as the reference does.

- One speaker: three all-ones masks (the DiT ignores them; it still requires the tensor).
- Two speakers with boxes: box (a, b, c, d) sets rows [int(a), int(c)) and columns [int(b), int(d)).
  The reference reads its JSON bbox as (x_min, y_min, x_max, y_max) but indexes rows with the "x"
  values, so the FIRST coordinate is vertical. We keep that order so reference bboxes work unchanged.
- Two speakers without boxes: rows [int(0.05·H), int(0.95·H)) × the 5%..95% span of the left half
  (speaker 1) and of the right half (speaker 2).
- Background: 1 where no speaker mask is set.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputValidationError
from .buckets import latent_size, resize_crop_geometry

FACE_SCALE = 0.05  # reference default margin of the no-bbox layout (fraction of height / half width)

BBox = Sequence[float]


def _default_boxes(src_h: int, src_w: int, face_scale: float) -> list[tuple[int, int, int, int]]:
    half = src_w // 2
    rows = (int(src_h * face_scale), int(src_h * (1 - face_scale)))
    left = (int(half * face_scale), int(half * (1 - face_scale)))
    right = (int(half * face_scale + half), int(half * (1 - face_scale) + half))
    return [(rows[0], left[0], rows[1], left[1]), (rows[0], right[0], rows[1], right[1])]


def source_speaker_masks(
    src_h: int, src_w: int, num_speakers: int, bboxes: Sequence[BBox] | None = None,
    face_scale: float = FACE_SCALE,
) -> torch.Tensor:
    """[3, src_h, src_w] float32 masks in source pixels: speaker 1, speaker 2, background."""
    if num_speakers not in (1, 2):
        raise InputValidationError(
            f"num_speakers must be 1 or 2, got {num_speakers!r}.",
            "InfiniteTalk routes audio for at most two speakers; mix extra voices into one track.",
        )
    if num_speakers == 1:
        return torch.ones(3, src_h, src_w)
    if bboxes is None:
        if not 0.0 <= face_scale < 0.5:
            raise InputValidationError(
                f"face_scale must be in [0, 0.5), got {face_scale}.", "Use the default 0.05."
            )
        boxes = _default_boxes(src_h, src_w, face_scale)
    else:
        boxes = [_check_box(i, box, src_h, src_w) for i, box in enumerate(bboxes)]
        if len(boxes) != num_speakers:
            raise InputValidationError(
                f"got {len(boxes)} speaker boxes for {num_speakers} speakers.",
                "Give exactly one box per speaker, in the order of the audio tracks.",
            )
    masks = torch.zeros(3, src_h, src_w)
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        masks[i, r0:r1, c0:c1] = 1.0
    masks[2] = (masks[:2].sum(0) == 0).float()
    return masks


def _check_box(i: int, box: BBox, src_h: int, src_w: int) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise InputValidationError(
            f"speaker box {i} has {len(box)} numbers, expected 4.",
            "Give each box as [row_min, col_min, row_max, col_max] in source pixels (reference bbox order).",
        )
    r0, c0, r1, c1 = (int(v) for v in box)
    if not (0 <= r0 < r1 and 0 <= c0 < c1) or r0 >= src_h or c0 >= src_w:
        raise InputValidationError(
            f"speaker box {i} = {list(box)} is empty or outside the {src_h}x{src_w} source.",
            "The first coordinate indexes rows (as in the reference's bbox); "
            "keep min < max inside the image.",
        )
    return r0, c0, r1, c1


def resize_crop_nearest(masks: torch.Tensor, target_h: int, target_w: int) -> torch.Tensor:
    """[C, H, W] -> [C, target_h, target_w]: the reference's cover-resize (nearest) + centre crop."""
    g = resize_crop_geometry(masks.shape[-2], masks.shape[-1], target_h, target_w)
    resized = F.interpolate(masks[None].float(), size=(g.resize_h, g.resize_w), mode="nearest")[0]
    return resized[:, g.top:g.top + target_h, g.left:g.left + target_w]


def speaker_masks(
    src_h: int, src_w: int, target_h: int, target_w: int, num_speakers: int = 1,
    bboxes: Sequence[BBox] | None = None, face_scale: float = FACE_SCALE,
) -> torch.Tensor:
    """[3, target_h/8, target_w/8] float32 binary ``ref_target_masks`` for the DiT (CPU).

    src_h, src_w: size of the source image/frame the boxes refer to; target_h, target_w: the bucket.
    """
    masks = source_speaker_masks(src_h, src_w, num_speakers, bboxes, face_scale)
    cropped = resize_crop_nearest(masks, target_h, target_w)
    lat = F.interpolate(cropped[None], size=latent_size(target_h, target_w), mode="nearest")[0]
    return (lat > 0).float()
