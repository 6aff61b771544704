"""Colour transfer methods: frames [N, H, W, 3] in [0, 1] towards reference frames [R, h, w, 3].

Each returns the fully corrected frames [N, H, W, 3] float32 in [0, 1] (blending is match.py's job).
The reference's statistics are pooled over all its R frames (one target for every frame), or taken
frame by frame when ``per_frame_reference`` (then R must equal N). Sizes may differ: only statistics
of the reference are used. Reference statistics are computed once; frames are processed in groups of
FRAME_BATCH so temporaries stay small for long, large chunks.

- lab: the reference implementation's per-frame, per-channel CIELAB mean/std transfer
  x' = (x − μ_f)·(σ_ref/σ_f) + μ_ref (population std); a flat channel (σ_f below FLAT_STD) is set to μ_ref.
- histogram: per RGB channel CDF mapping (each value goes to the reference value at the same
  quantile; equal inputs map to equal outputs), like skimage.exposure.match_histograms, with the
  frame's CDF from a fine histogram.
- mkl: Monge-Kantorovich linear transfer: x' = (x − μ_f)·T + μ_ref with the symmetric 3×3
  T = Σ_f^{-1/2} (Σ_f^{1/2} Σ_ref Σ_f^{1/2})^{1/2} Σ_f^{-1/2}, mapping the frame's RGB covariance onto the
  reference's (Pitié & Kokaram 2007).
"""
from __future__ import annotations

from typing import Callable

import torch

from .lab import lab_to_rgb, rgb_to_lab

FLAT_STD = 1e-3  # LAB units (L spans 0..100): a channel this flat has no contrast to rescale
EIG_FLOOR = 1e-8  # RGB variance floor for MKL (std 1e-4 of the [0, 1] range)
HIST_BINS = 4096  # histogram resolution: 16 bins per 8-bit output step
FRAME_BATCH = 4  # frames converted at once: bounds temporaries (e.g. 720p x 81 frames)

Stats = tuple[torch.Tensor, ...]


# --- lab --------------------------------------------------------------------------------------------
def _lab_stats(rows: torch.Tensor) -> Stats:
    """[B, P, 3] RGB rows -> (mean, std) [B, 1, 3] of their CIELAB values."""
    std, mean = torch.std_mean(rgb_to_lab(rows), dim=1, keepdim=True, correction=0)
    return mean, std


def _lab_apply(frames: torch.Tensor, ref: Stats) -> torch.Tensor:
    mean_r, std_r = ref
    lab = rgb_to_lab(frames.reshape(frames.shape[0], -1, 3))
    std_f, mean_f = torch.std_mean(lab, dim=1, keepdim=True, correction=0)
    flat = std_f <= FLAT_STD
    scale = torch.where(flat, torch.zeros_like(std_f), std_r / std_f.clamp_min(FLAT_STD))
    corrected = torch.addcmul(mean_r - mean_f * scale, lab, scale)  # (x − μ_f)·scale + μ_ref, fused
    return lab_to_rgb(corrected).reshape(frames.shape)


# --- histogram --------------------------------------------------------------------------------------
def _hist_stats(rows: torch.Tensor) -> Stats:
    """[B, P, 3] -> sorted values per channel [B, 3, P]."""
    return (rows.transpose(1, 2).sort(-1).values,)


def _quantile_values(sorted_ref: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sorted_ref [B or 1, 3, Q], q [B, 3, K] in [0, 1] -> reference values at those quantiles
    (sample j sits at quantile (j + 0.5) / Q; linear in between, clamped at the ends)."""
    size = sorted_ref.shape[-1]
    pos = (q * size - 0.5).clamp(0, size - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(size - 1)
    w = pos - lo
    ref = sorted_ref.expand(q.shape[0], -1, -1)
    return torch.gather(ref, -1, lo) * (1 - w) + torch.gather(ref, -1, hi) * w


def _hist_apply(frames: torch.Tensor, ref: Stats) -> torch.Tensor:
    """The frame's CDF comes from a HIST_BINS histogram: bin edges map to the reference value at the
    share of pixels below the edge, values inside a bin interpolate (O(pixels), no per-frame sort)."""
    src = frames.reshape(frames.shape[0], -1, 3).transpose(1, 2)  # [B, 3, P]
    b, c, p = src.shape
    pos = src * HIST_BINS
    bins = pos.long().clamp_(0, HIST_BINS - 1)
    frac = pos - bins
    rows = torch.arange(b * c, device=src.device).view(b, c, 1) * HIST_BINS
    counts = torch.bincount((bins + rows).flatten(), minlength=b * c * HIST_BINS).view(b, c, HIST_BINS)
    below = torch.cat([counts.new_zeros(b, c, 1), counts.cumsum(-1)], dim=-1).float() / p
    edges = _quantile_values(ref[0], below)  # [B, 3, BINS + 1]
    out = torch.lerp(torch.gather(edges, -1, bins), torch.gather(edges, -1, bins + 1), frac)
    return out.transpose(1, 2).reshape(frames.shape).clamp_(0.0, 1.0)


# --- mkl --------------------------------------------------------------------------------------------
def _mean_cov(x: torch.Tensor) -> Stats:
    """[B, P, 3] -> mean [B, 1, 3] (float32), covariance [B, 3, 3] (float64, population)."""
    mean = x.mean(1, keepdim=True)
    centred = x - mean
    return mean, (centred.transpose(1, 2) @ centred).double() / x.shape[1]


def _sym_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    """Symmetric PSD [.., 3, 3] matrix to a real power via its eigen-decomposition (float64)."""
    values, vectors = torch.linalg.eigh(cov)
    scaled = vectors * values.clamp_min(EIG_FLOOR).pow(power).unsqueeze(-2)
    return scaled @ vectors.transpose(-1, -2)


def _mkl_apply(frames: torch.Tensor, ref: Stats) -> torch.Tensor:
    mean_r, cov_r = ref
    x = frames.reshape(frames.shape[0], -1, 3)
    mean_f, cov_f = _mean_cov(x)
    root_f, inv_root_f = _sym_power(cov_f, 0.5), _sym_power(cov_f, -0.5)
    transform = (inv_root_f @ _sym_power(root_f @ cov_r @ root_f, 0.5) @ inv_root_f).float()
    out = torch.baddbmm(mean_r - mean_f @ transform, x, transform)  # (x − μ_f)·T + μ_ref
    return out.reshape(frames.shape).clamp_(0.0, 1.0)


# name -> (reference statistics from pixel rows [B, P, 3], apply to frames [B, H, W, 3])
METHODS: dict[str, tuple[Callable[[torch.Tensor], Stats], Callable[[torch.Tensor, Stats], torch.Tensor]]] = {
    "lab": (_lab_stats, _lab_apply),
    "histogram": (_hist_stats, _hist_apply),
    "mkl": (_mean_cov, _mkl_apply),
}


def transfer_colors(frames: torch.Tensor, reference: torch.Tensor, method: str,
                    per_frame_reference: bool = False) -> torch.Tensor:
    """frames [N, H, W, 3], reference [R, h, w, 3] (float32 in [0, 1]) -> corrected [N, H, W, 3]."""
    n = frames.shape[0]
    prepare, apply = METHODS[method]
    if per_frame_reference and reference.shape[0] != n:
        raise ValueError(f"per-frame reference needs {n} reference frames, got {reference.shape[0]}")
    rows = reference.reshape(reference.shape[0] if per_frame_reference else 1, -1, 3)
    stats = prepare(rows)
    out = torch.empty_like(frames)
    for i in range(0, n, FRAME_BATCH):
        part = stats if not per_frame_reference else tuple(s[i : i + FRAME_BATCH] for s in stats)
        out[i : i + FRAME_BATCH] = apply(frames[i : i + FRAME_BATCH], part)
    return out


def lab_mean_std_transfer(
    frames: torch.Tensor, reference: torch.Tensor, per_frame_reference: bool = False
) -> torch.Tensor:
    """The reference's CIELAB mean/std transfer. [N, H, W, 3], [R, h, w, 3] (both in [0, 1])."""
    return transfer_colors(frames.float(), reference.float(), "lab", per_frame_reference)


def histogram_transfer(
    frames: torch.Tensor, reference: torch.Tensor, per_frame_reference: bool = False
) -> torch.Tensor:
    """Per-channel histogram matching. [N, H, W, 3], [R, h, w, 3] (both in [0, 1])."""
    return transfer_colors(frames.float(), reference.float(), "histogram", per_frame_reference)


def mkl_transfer(
    frames: torch.Tensor, reference: torch.Tensor, per_frame_reference: bool = False
) -> torch.Tensor:
    """Monge-Kantorovich linear colour transfer. [N, H, W, 3], [R, h, w, 3] (both in [0, 1])."""
    return transfer_colors(frames.float(), reference.float(), "mkl", per_frame_reference)
