"""One chunk of a dub that keeps the source: the source clip of the chunk's time range and what the
sampler and the composite need from it (``settings.denoise`` < 1 and/or a ``DubMask``).

- denoise < 1: the chunk starts from VAE(source clip) noised to the first step that runs;
- a dub mask: the sampler keeps the noised source outside the mask at every step (``SourcePin``), the
  audio reaches only tokens inside it, and the decoded frames are composited onto the source clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling.inpaint import SourcePin
from .conditioning import encode_context
from .dub_mask import composite, latent_keep, token_gate
from .plan import ChunkPlan
from .references import source_indices_for_chunk


@dataclass(frozen=True)
class ChunkDub:
    """source_latents [16, T, h, w]; with a mask also the source clip [3, F, H, W], composite weights
    alpha [F, H, W], the latent keep mask [1, T, h, w] and the audio gate [T, h/2, w/2]."""

    source_latents: torch.Tensor
    source_pixels: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    audio_gate: torch.Tensor | None = None

    def pin(self, noise: torch.Tensor) -> SourcePin | None:
        """The sampler's pin (keeps the source outside the mask with the chunk's noise), None without a mask."""
        return None if self.keep is None else SourcePin(self.source_latents, noise, self.keep)


def dub_active(run) -> bool:
    return run.settings.denoise < 1.0 or run.dub_mask is not None


def chunk_dub(run, chunk: ChunkPlan, ref_index: int) -> ChunkDub | None:
    """The source of ``chunk``'s time range (None when the run generates from noise, unmasked).

    Read before the reference frame, which the clip holds in memory for it: a video source then reads
    forwards only."""
    if not dub_active(run):
        return None
    source, s = run.source.source, run.settings
    indices = source_indices_for_chunk(chunk, source.num_frames, source.fps, s.reference_overflow)
    pixels = run.source.clip(indices, run.device, hold=(ref_index,))
    latents = encode_context(run.vae, pixels)  # all F frames: the source's latents, slot by slot
    if run.dub_mask is None:
        return ChunkDub(latents)
    masks = run.dub_mask.pixel_masks(indices, run.device)
    keep, alpha = latent_keep(masks), run.dub_mask.composite_weights(masks)
    if bool(keep.max() == 0):  # a mask over every token: the pin and the gate would be identities
        return ChunkDub(latents, pixels, alpha)
    return ChunkDub(latents, pixels, alpha, keep, token_gate(keep))


def finish_dub(dub: ChunkDub | None, pixels: torch.Tensor) -> torch.Tensor:
    """The decoded, colour-corrected chunk laid onto the source through the feathered mask (unchanged
    without a mask)."""
    if dub is None or dub.alpha is None:
        return pixels
    return composite(pixels, dub.source_pixels, dub.alpha)
