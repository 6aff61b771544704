"""sRGB <-> CIELAB (D65, 2° observer) in vectorised torch, matching scikit-image's rgb2lab / lab2rgb.

Formulas (scikit-image ``skimage.color.colorconv``; constants from IEC 61966-2-1 and the CIE):
- sRGB -> linear: c > 0.04045 ? ((c + 0.055) / 1.055)^2.4 : c / 12.92; linear -> XYZ with the sRGB
  matrix below; XYZ / white -> f(u) = u > 0.008856 ? u^(1/3) : 7.787·u + 16/116;
  L = 116·f(Y) − 16, a = 500·(f(X) − f(Y)), b = 200·(f(Y) − f(Z)).
- Inverse: f(Y) = (L + 16)/116, f(X) = a/500 + f(Y), f(Z) = f(Y) − b/200 with f(Z) clipped at 0
  (skimage warns there); u = f > 0.2068966 ? f³ : (f − 16/116)/7.787; XYZ·white -> linear RGB with the
  inverse matrix -> c > 0.0031308 ? 1.055·c^(1/2.4) − 0.055 : 12.92·c; clipped to [0, 1].
Computed in float32 (as skimage does for float32 input); shapes [..., 3], channels last.
"""
from __future__ import annotations

import torch

# sRGB (D65) linear RGB -> XYZ; skimage's ``xyz_from_rgb``.
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
D65_WHITE = (0.95047, 1.0, 1.08883)  # CIE XYZ of the D65 white point, 2° observer, Y = 1


# Linear maps around the non-linear steps, so each direction is: gamma, one 3x3 map, cube root (or
# cube), one 3x3 map. Folding the white point into the matrices reorders float32 roundings only.
_LAB_FROM_F = ((0.0, 116.0, 0.0), (500.0, -500.0, 0.0), (0.0, 200.0, -200.0))  # rows: L, a, b from f(X,Y,Z)
_LAB_OFFSET = (-16.0, 0.0, 0.0)
_F_FROM_LAB = ((1 / 116, 1 / 500, 0.0), (1 / 116, 0.0, 0.0), (1 / 116, 0.0, -1 / 200))  # rows: fX, fY, fZ
_F_OFFSET = (16 / 116, 16 / 116, 16 / 116)


def _matrices(device: torch.device) -> dict[str, torch.Tensor]:
    """float32 matrices on ``device``; the sRGB inverse is taken in float64 (as skimage does)."""
    forward = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
    white = torch.tensor(D65_WHITE, dtype=torch.float64)
    mats = {
        "u_from_linear": forward / white[:, None],  # XYZ / white
        "linear_from_u": torch.linalg.inv(forward) * white[None, :],  # inverse of the above
        "lab_from_f": torch.tensor(_LAB_FROM_F, dtype=torch.float64),
        "lab_offset": torch.tensor(_LAB_OFFSET, dtype=torch.float64),
        "f_from_lab": torch.tensor(_F_FROM_LAB, dtype=torch.float64),
        "f_offset": torch.tensor(_F_OFFSET, dtype=torch.float64),
    }
    return {k: v.to(device=device, dtype=torch.float32) for k, v in mats.items()}


def _affine(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """[..., 3] -> [..., 3]: x @ matrix.T (+ offset), as one GEMM over all pixels."""
    flat = x.reshape(-1, 3)
    out = flat @ matrix.T if offset is None else torch.addmm(offset, flat, matrix.T)
    return out.view(x.shape)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB in [0, 1] -> [..., 3] CIELAB (L in [0, 100]), float32 on rgb's device."""
    m = _matrices(rgb.device)
    c = rgb.float()
    linear = torch.where(c > 0.04045, ((c + 0.055) / 1.055).pow_(2.4), c / 12.92)
    u = _affine(linear, m["u_from_linear"])
    f = torch.where(u > 0.008856, u.clamp_min(0.008856).pow_(1.0 / 3.0), u * 7.787 + 16.0 / 116.0)
    return _affine(f, m["lab_from_f"], m["lab_offset"])


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """[..., 3] CIELAB -> [..., 3] sRGB clipped to [0, 1], float32 on lab's device."""
    m = _matrices(lab.device)
    f = _affine(lab.float(), m["f_from_lab"], m["f_offset"])
    f[..., 2].clamp_min_(0.0)  # negative Z is invalid: skimage clips it to 0 (and warns)
    u = torch.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787)
    linear = _affine(u, m["linear_from_u"])
    gamma = linear.clamp_min(0.0031308).pow_(1.0 / 2.4) * 1.055 - 0.055
    srgb = torch.where(linear > 0.0031308, gamma, linear * 12.92)
    return srgb.clamp_(0.0, 1.0)
