"""Resolution buckets and the resize-and-centre-crop geometry of the reference.

The reference picks, from the source's height/width ratio, the bucket whose key is closest (first
one wins a tie, keys in ascending order), scales the source by max(th/H, tw/W) to
ceil(scale·H) × ceil(scale·W) and centre-crops to the bucket with torchvision's rounding
(top = int(round((h' − th) / 2)), Python's round-half-to-even).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import InputValidationError

BucketFamily = Literal["480", "720"]

# ratio key (H/W as written in the reference) -> (height, width). Keys stay strings parsed with
# float() so ties and distances are computed on exactly the reference's numbers.
BUCKETS_480: dict[str, tuple[int, int]] = {
    "0.26": (320, 1216), "0.38": (384, 1024), "0.50": (448, 896), "0.67": (512, 768),
    "0.82": (576, 704), "1.00": (640, 640), "1.22": (704, 576), "1.50": (768, 512),
    "1.86": (832, 448), "2.00": (896, 448), "2.50": (960, 384), "2.83": (1088, 384),
    "3.60": (1152, 320), "3.80": (1216, 320), "4.00": (1280, 320),
}
BUCKETS_720: dict[str, tuple[int, int]] = {
    "0.22": (448, 2048), "0.29": (512, 1792), "0.36": (576, 1600), "0.45": (640, 1408),
    "0.55": (704, 1280), "0.63": (768, 1216), "0.76": (832, 1088), "0.88": (896, 1024),
    "1.00": (960, 960), "1.14": (1024, 896), "1.31": (1088, 832), "1.50": (1152, 768),
    "1.58": (1216, 768), "1.82": (1280, 704), "1.91": (1344, 704), "2.20": (1408, 640),
    "2.30": (1472, 640), "2.67": (1536, 576), "2.89": (1664, 576), "3.62": (1856, 512),
    "3.75": (1920, 512),
}
BUCKET_TABLES: dict[str, dict[str, tuple[int, int]]] = {"480": BUCKETS_480, "720": BUCKETS_720}
DEFAULT_SHIFT: dict[str, float] = {"480": 7.0, "720": 11.0}  # reference CLI: shift 7 at 480p, 11 at 720p
SPATIAL_STRIDE = 8  # Wan 2.1 VAE downsamples 8x in height and width
PATCH = 2  # DiT patch size (1, 2, 2): one token per 2x2 latent pixels


@dataclass(frozen=True)
class ResizeCrop:
    """Resize a (src_h, src_w) image to (resize_h, resize_w), then keep rows [top, top+height)
    and columns [left, left+width)."""

    src_h: int
    src_w: int
    resize_h: int
    resize_w: int
    top: int
    left: int
    height: int
    width: int


def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputValidationError(
                f"source {name} must be a positive integer, got {value!r}.",
                "Pass the pixel size of the reference image or of the source video's frames.",
            )


def _table(family: str) -> dict[str, tuple[int, int]]:
    table = BUCKET_TABLES.get(str(family))
    if table is None:
        raise InputValidationError(
            f"unknown bucket family {family!r}.", f"Use one of {', '.join(BUCKET_TABLES)}."
        )
    return table


def bucket_for(height: int, width: int, family: BucketFamily = "480") -> tuple[int, int]:
    """(target_h, target_w) of the bucket whose H/W ratio key is closest to height/width."""
    _check_size(height, width)
    table = _table(family)
    ratio = height / width
    key = min(table, key=lambda k: abs(float(k) - ratio))  # min keeps the first of equal distances
    return table[key]


def resize_crop_geometry(src_h: int, src_w: int, target_h: int, target_w: int) -> ResizeCrop:
    """The reference's cover-resize then centre-crop from (src_h, src_w) to (target_h, target_w)."""
    _check_size(src_h, src_w)
    _check_size(target_h, target_w)
    scale = max(target_h / src_h, target_w / src_w)
    resize_h, resize_w = math.ceil(scale * src_h), math.ceil(scale * src_w)
    top = int(round((resize_h - target_h) / 2.0))  # torchvision center_crop rounding
    left = int(round((resize_w - target_w) / 2.0))
    return ResizeCrop(src_h, src_w, resize_h, resize_w, top, left, target_h, target_w)


def latent_size(target_h: int, target_w: int) -> tuple[int, int]:
    """Latent grid (h, w) of a bucket: 8x smaller."""
    return target_h // SPATIAL_STRIDE, target_w // SPATIAL_STRIDE


def tokens_per_latent_frame(target_h: int, target_w: int) -> int:
    """DiT tokens per latent frame: (h/2)·(w/2)."""
    lat_h, lat_w = latent_size(target_h, target_w)
    return (lat_h // PATCH) * (lat_w // PATCH)


def default_shift(family: BucketFamily) -> float:
    """The reference CLI's flow shift for a bucket family (7 at 480, 11 at 720)."""
    _table(family)
    return DEFAULT_SHIFT[str(family)]
