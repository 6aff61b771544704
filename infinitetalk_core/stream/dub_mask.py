"""The region a dub may change (``dub_mask``), on the three grids it acts on, and the final composite.

A dub mask is 1 where the model generates (the face, the speaker) and 0 where the source is kept. It is
one [H, W] mask or one mask per source frame; per chunk frame it is picked by time like the source
frames (``references.source_indices_for_chunk``). From the pixel masks of a chunk:

- latent grid (``latent_keep``): a latent pixel is generated if any of its pixels (8x8, and the 4 frames
  folded into it; latent frame 0 is pixel frame 0 alone) is; elsewhere the sampler keeps the noised
  source (``sampling.inpaint.SourcePin``);
- token grid (``token_gate``): a patch token (2x2 latent pixels) hears the audio if any of its latent
  pixels is generated; the DiT multiplies its audio cross-attention output by this gate;
- pixels (``feather_alpha`` + ``composite``): the decoded, colour-corrected frames are laid onto the
  source frames through the mask feathered *inwards* (eroded by the feather radius, then box-blurred
  within it: a linear ramp), so every pixel outside the mask is the source pixel exactly.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputValidationError
from .host import VAE_SPACE_STRIDE, VAE_TIME_STRIDE, tensor_digest
from .sources import resize_crop_pixels

MAX_FEATHER = 256
TOKEN_PATCH = 2  # the DiT's spatial patch size (latent pixels per token side)


LEVELS = 255  # masks are kept as 8-bit levels: a quarter of float32 for an hour of per-frame masks
_BATCH = 64  # frames converted at a time (no whole-video float copy)


def _check_feather(feather: object) -> int:
    if isinstance(feather, bool) or not isinstance(feather, int) or not 0 <= feather <= MAX_FEATHER:
        raise InputValidationError(f"mask_feather must be an integer in 0..{MAX_FEATHER}, got {feather!r}.",
                                   "Use 0 for a hard edge, 8-24 pixels for a soft one.")
    return feather


def _levels(frames: torch.Tensor) -> torch.Tensor:
    """[n, H, W] float masks (any device) -> uint8 levels on the CPU; NaN/inf refused."""
    frames = frames.detach().to("cpu", torch.float32)
    if not torch.isfinite(frames).all():
        raise InputValidationError("dub_mask contains NaN or infinite values.", "Check the mask nodes.")
    return frames.clamp(0, 1).mul(LEVELS).round().to(torch.uint8)


class DubMask:
    """Dub masks at the output size, [N, H, W], N = 1 (static) or one per source frame; 0 = keep the
    source, 1 = generate (stored as uint8 levels: ``masks`` == 0 exactly where the source is kept).

    ``feather``: the composite's soft edge in output pixels (0 = hard edge), inside the mask.
    """

    def __init__(self, masks: torch.Tensor, feather: int = 0):
        if not isinstance(masks, torch.Tensor) or masks.ndim != 3 or min(masks.shape) < 1:
            got = getattr(masks, "shape", type(masks).__name__)
            raise InputValidationError(f"dub_mask must be [frames, height, width], got {got}.",
                                       "Connect a MASK (one mask, or one per source frame).")
        self.feather = _check_feather(feather)
        if masks.dtype == torch.uint8:
            self.masks = masks.cpu().contiguous()
        else:
            self.masks = torch.cat([_levels(masks[i:i + _BATCH]) for i in range(0, masks.shape[0], _BATCH)])

    @classmethod
    def from_source_masks(cls, masks: torch.Tensor, size: tuple[int, int], feather: int = 0) -> "DubMask":
        """ComfyUI MASK [H, W] or [N, H, W] drawn on the source frames -> masks at ``size`` (height, width),
        through the same cover-resize and centre crop as the frames (one frame at a time)."""
        masks = masks[None] if masks.ndim == 2 else masks
        if masks.ndim != 3:
            raise InputValidationError(f"dub_mask must be [height, width] or [frames, height, width], got "
                                       f"{list(masks.shape)}.", "Connect a ComfyUI MASK.")
        out = torch.empty(masks.shape[0], *size, dtype=torch.uint8)
        for i in range(masks.shape[0]):
            out[i] = _levels(resize_crop_pixels(masks[i][None].float(), *size))[0]
        return cls(out, feather)

    @property
    def num_frames(self) -> int:
        return self.masks.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[-2:])

    def composite_weights(self, pixel_masks: torch.Tensor) -> torch.Tensor:
        """[F, H, W] feathered composite weights of a chunk's ``pixel_masks`` (from ``pixel_masks``); a
        static mask's are computed once for the run."""
        if self.num_frames > 1:
            return feather_alpha(pixel_masks, self.feather)
        cached = self.__dict__.get("_static_alpha")
        if cached is None or cached.device != pixel_masks.device:
            cached = self.__dict__["_static_alpha"] = feather_alpha(pixel_masks[:1], self.feather)
        return cached.expand_as(pixel_masks)

    def pixel_masks(self, source_indices: Sequence[int], device=None) -> torch.Tensor:
        """[F, H, W] float32 in [0, 1]: the mask of each chunk frame, given the source frame each shows."""
        if self.num_frames == 1:
            frame = self.masks.to(device).float().div_(LEVELS)
            return frame.expand(len(source_indices), *self.size)
        return self.masks[torch.as_tensor(list(source_indices))].to(device).float().div_(LEVELS)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"dub_mask|{self.feather}|".encode() + tensor_digest(self.masks).encode()).hexdigest()


def latent_keep(pixel_masks: torch.Tensor) -> torch.Tensor:
    """[F, H, W] pixel masks (F = 4n+1) -> [1, n+1, H/8, W/8]: 1 where every folded pixel is outside the
    mask (the sampler keeps the source there), else 1 − the largest mask value among them."""
    first, rest = pixel_masks[:1], pixel_masks[1:]
    if rest.shape[0] % VAE_TIME_STRIDE:
        raise InputValidationError(f"{pixel_masks.shape[0]} mask frames are not 4n+1.", "Give one per chunk frame.")
    folded = rest.reshape(-1, VAE_TIME_STRIDE, *rest.shape[1:]).amax(1)
    frames = torch.cat([first, folded])  # [T, H, W]
    pooled = F.max_pool2d(frames[:, None], VAE_SPACE_STRIDE)[:, 0]
    return (1 - pooled)[None]


def token_gate(keep: torch.Tensor) -> torch.Tensor:
    """[1, T, h, w] latent keep mask -> [T, h/2, w/2] audio gate (1 − keep, max over each token's pixels)."""
    return F.max_pool2d(1 - keep[0][:, None], TOKEN_PATCH)[:, 0]


def _box_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sums over windows of 2·radius + 1 along ``dim`` (-1 or -2) of [N, 1, H, W], edges replicated:
    one cumulative sum, so the cost does not grow with the radius (counts of 0/1 values stay exact)."""
    size, n = 2 * radius + 1, x.shape[dim]
    pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    total = F.pad(x, pad, mode="replicate").cumsum(dim)
    total = F.pad(total, (1, 0, 0, 0) if dim == -1 else (0, 0, 1, 0))  # a leading zero
    return total.narrow(dim, size, n) - total.narrow(dim, 0, n)


def mask_box(pixel_masks: torch.Tensor, margin: int = 0) -> tuple[slice, slice] | None:
    """(rows, columns) around every nonzero pixel of [F, H, W] masks, ``margin`` wider (inside the frame);
    None for an empty mask."""
    rows = torch.nonzero(pixel_masks.amax(dim=(0, 2)) > 0).flatten()
    cols = torch.nonzero(pixel_masks.amax(dim=(0, 1)) > 0).flatten()
    if rows.numel() == 0:
        return None
    height, width = pixel_masks.shape[-2:]
    top, bottom = max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + 1 + margin)
    left, right = max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + 1 + margin)
    return slice(top, bottom), slice(left, right)


def feather_alpha(pixel_masks: torch.Tensor, radius: int) -> torch.Tensor:
    """[F, H, W] -> [F, H, W] composite weights: the mask's area eroded by ``radius`` (pixels whose whole
    (2r+1)² window is inside), box-blurred over the same window (a linear ramp over 2·radius pixels inside
    the edge) and capped by the mask. Neither reaches further than ``radius``, so the weight is exactly 0
    wherever the mask is 0. Computed on the masks' bounding box only (a face is a small part of a frame)."""
    box = mask_box(pixel_masks, radius + 1)
    if radius <= 0 or box is None:
        return pixel_masks
    alpha = torch.zeros_like(pixel_masks)
    alpha[:, box[0], box[1]] = _feather(pixel_masks[:, box[0], box[1]], radius)
    return alpha


def _feather(pixel_masks: torch.Tensor, radius: int) -> torch.Tensor:
    area = float((2 * radius + 1) ** 2)
    inside = (pixel_masks[:, None] > 0).float()
    count = _box_sum(_box_sum(inside, radius, -1), radius, -2)
    eroded = (count > area - 0.5).float()
    ramp = _box_sum(_box_sum(eroded, radius, -1), radius, -2) / area
    return torch.minimum(ramp[:, 0], pixel_masks)


def composite(generated: torch.Tensor, source: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """generated·α + source·(1 − α) per pixel: [3, F, H, W] each, α [F, H, W]; the source exactly where
    α = 0 (blended only inside α's bounding box; a copy of the source elsewhere)."""
    out = source.to(generated, copy=True)
    box = mask_box(alpha)
    if box is not None:
        a = alpha[None, :, box[0], box[1]].to(generated)
        g, s = generated[:, :, box[0], box[1]], out[:, :, box[0], box[1]]
        out[:, :, box[0], box[1]] = g * a + s * (1 - a)
    return out


__all__ = ["DubMask", "MAX_FEATHER", "composite", "feather_alpha", "latent_keep", "token_gate"]
