"""Colour matching with strength, on ComfyUI IMAGE batches or on the engine's [-1, 1] clips.

``match_colors`` is the reference's ``match_and_blend_colors`` generalised: frames and reference are
clipped to [0, 1], corrected with the chosen method, and blended: out = (1 − s)·frames + s·corrected.
Strength 0 returns the input object unchanged. Computation is float32 on the input's device; the
result has the input's dtype.

Which reference (the caller passes the frames; ``select_color_reference`` implements the names):
- "first": the first chunk's reference image, fixed for the whole video (reference behaviour);
- "chunk": the chunk's own reference frame (right for V2V, where the source's colour changes);
- "previous_tail": the previous chunk's last context frames after correction (statistics pooled over
  them); the first chunk uses the first reference.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..errors import InputValidationError
from .transfer import METHODS, transfer_colors

ColorMethod = Literal["lab", "histogram", "mkl"]
ColorReference = Literal["first", "chunk", "previous_tail"]
COLOR_METHODS: tuple[str, ...] = tuple(METHODS)
COLOR_REFERENCES: tuple[str, ...] = ("first", "chunk", "previous_tail")


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] != 3 or x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise InputValidationError(
            f"{name} must be an RGB image batch [N, H, W, 3], got shape {tuple(x.shape)}.",
            "Pass ComfyUI IMAGE tensors (channels last, values in [0, 1]); use match_colors_signed for "
            "[3, N, H, W] clips in [-1, 1].",
        )
    if not x.is_floating_point():
        raise InputValidationError(
            f"{name} must be a float tensor, got {x.dtype}.", "Convert to float in [0, 1]."
        )
    return x


def match_colors(
    frames: torch.Tensor,
    reference: torch.Tensor,
    method: ColorMethod = "lab",
    strength: float = 1.0,
    per_frame_reference: bool = False,
) -> torch.Tensor:
    """[N, H, W, 3] in [0, 1] -> [N, H, W, 3] in [0, 1], colours moved towards ``reference``.

    reference: [R, h, w, 3] or [h, w, 3] in [0, 1]; statistics pooled over its frames, or frame i of
    the reference for frame i when ``per_frame_reference`` (R == N). method: "lab" (the reference
    implementation's, default), "histogram" or "mkl". strength in [0, 1].
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise InputValidationError(
            f"colour-match strength must be a number in [0, 1], got {strength!r}.",
            "Use 1 for full correction (reference default), 0 to turn it off.",
        )
    if method not in METHODS:
        raise InputValidationError(
            f"unknown colour-match method {method!r}.", f"Use one of {', '.join(METHODS)}."
        )
    if strength == 0.0:
        return frames
    x, ref = _as_batch(frames, "frames"), _as_batch(reference, "reference")
    if per_frame_reference and ref.shape[0] != x.shape[0]:
        raise InputValidationError(
            f"per_frame_reference needs one reference frame per frame: {ref.shape[0]} for {x.shape[0]}.",
            "Pass as many reference frames as frames, or set per_frame_reference=False to pool them.",
        )
    x = x.float().clamp(0.0, 1.0)
    ref = ref.to(device=x.device, dtype=torch.float32).clamp(0.0, 1.0)
    corrected = transfer_colors(x, ref, method, per_frame_reference)
    out = (1 - strength) * x + strength * corrected
    return out.reshape(frames.shape).to(frames.dtype)


def signed_to_image(clip: torch.Tensor) -> torch.Tensor:
    """[3, N, H, W] (or [1, 3, N, H, W]) in [-1, 1] -> [N, H, W, 3] in [0, 1] (not clipped)."""
    if clip.dim() == 5 and clip.shape[0] == 1:
        clip = clip[0]
    if clip.dim() != 4 or clip.shape[0] != 3:
        raise InputValidationError(
            f"expected a clip [3, N, H, W] in [-1, 1], got shape {tuple(clip.shape)}.",
            "Pass decoded VAE pixels in the engine's layout (channels first, then frames).",
        )
    return ((clip + 1.0) / 2.0).permute(1, 2, 3, 0)


def image_to_signed(images: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] in [0, 1] -> [3, N, H, W] in [-1, 1]."""
    return (images * 2.0 - 1.0).permute(3, 0, 1, 2)


def match_colors_signed(
    clip: torch.Tensor,
    reference: torch.Tensor,
    method: ColorMethod = "lab",
    strength: float = 1.0,
    per_frame_reference: bool = False,
) -> torch.Tensor:
    """match_colors for the engine's layout: clip [3, N, H, W] and reference [3, R, h, w] (a leading
    batch of 1 is accepted and kept), both in [-1, 1] -> [3, N, H, W] in [-1, 1]. Strength 0 returns
    ``clip`` unchanged."""
    if isinstance(strength, (int, float)) and not isinstance(strength, bool) and strength == 0.0:
        return clip
    images, ref_images = signed_to_image(clip), signed_to_image(reference)
    out = match_colors(images, ref_images, method, strength, per_frame_reference)
    signed = image_to_signed(out).contiguous()
    return signed[None] if clip.dim() == 5 else signed


def select_color_reference(
    kind: ColorReference,
    first_reference: torch.Tensor,
    chunk_reference: torch.Tensor | None = None,
    previous_tail: torch.Tensor | None = None,
) -> torch.Tensor:
    """The frames to match a chunk against, by name (see the module docstring). Any one layout."""
    if kind == "first":
        return first_reference
    if kind == "chunk":
        if chunk_reference is None:
            raise InputValidationError(
                "colour reference 'chunk' needs the chunk's reference frame.", "Pass chunk_reference."
            )
        return chunk_reference
    if kind == "previous_tail":
        return first_reference if previous_tail is None else previous_tail
    raise InputValidationError(
        f"unknown colour reference {kind!r}.", f"Use one of {', '.join(COLOR_REFERENCES)}."
    )

