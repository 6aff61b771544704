"""Colour correction: CIELAB mean/std transfer (the reference's), histogram matching and MKL,
with strength, on ComfyUI IMAGE batches or the engine's [-1, 1] clips. Vectorised torch."""
from .lab import lab_to_rgb, rgb_to_lab
from .match import (
    COLOR_METHODS,
    COLOR_REFERENCES,
    image_to_signed,
    match_colors,
    match_colors_signed,
    select_color_reference,
    signed_to_image,
)
from .transfer import histogram_transfer, lab_mean_std_transfer, mkl_transfer, transfer_colors

__all__ = [
    "COLOR_METHODS", "COLOR_REFERENCES", "histogram_transfer", "image_to_signed", "lab_mean_std_transfer",
    "lab_to_rgb", "match_colors", "match_colors_signed", "mkl_transfer", "rgb_to_lab",
    "select_color_reference", "signed_to_image", "transfer_colors",
]
