"""Per-chunk conditioning (spec §4.2): the y latent, the clean context latents, CLIP features.

- y = [mask (4 channels) | VAE(reference frame + F−1 mid-grey frames)]: [20, T, h, w]. The mask is 1
  on latent frame 0 and 0 elsewhere, identical for every chunk (context frames are never marked).
  Mid-grey is 0.0 in [-1, 1] pixel space (not black).
- context latents = VAE(context pixels): the reference frame alone on the first chunk (1 latent), the
  last M generated frames after colour correction later ((M−1)/4 + 1 latents).
- CLIP features of the chunk's reference frame, when an image encoder is given.

SVI-Talk (``mode = svi_talk``, Stable Video Infinity's ``encode_images_adaptive`` with ref_pad_num −1):
- y = [mask | VAE(the N motion frames + the reference frame as each of the F − N padding frames)], the
  mask 1 on latent frame 0 only (as there, even for N > 1); no clean context latents;
- CLIP features of the first motion frame (the previous chunk's last frame; chunk 0: the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GenerationError
from .host import LATENT_CHANNELS, VAE_SPACE_STRIDE, VAE_TIME_STRIDE, ImageEncoder, VideoVAE

MASK_CHANNELS = 4  # the 4 pixel frames folded into each latent frame


@dataclass(frozen=True)
class ChunkConditioning:
    """What the DiT sees besides the noisy latent and audio, for one chunk."""

    y: torch.Tensor  # [20, T, h, w]
    context_latents: torch.Tensor | None  # [16, Tc, h, w] (None: SVI-Talk writes no context)
    clip_features: torch.Tensor | None  # [1, 257, clip_dim]


def first_frame_mask(latent_frames: int, h: int, w: int, device=None) -> torch.Tensor:
    """[4, T, h, w]: 1 on latent frame 0, 0 elsewhere (the reference's folded pixel mask)."""
    mask = torch.zeros(MASK_CHANNELS, latent_frames, h, w, device=device)
    mask[:, 0] = 1.0
    return mask


def _check_latents(latents: torch.Tensor, frames: int, height: int, width: int, what: str) -> None:
    expected = (
        LATENT_CHANNELS,
        1 + (frames - 1) // VAE_TIME_STRIDE,
        height // VAE_SPACE_STRIDE,
        width // VAE_SPACE_STRIDE,
    )
    if tuple(latents.shape) != expected:
        raise GenerationError(
            f"The VAE returned {tuple(latents.shape)} for {what}; expected {expected}.",
            "Use the Wan 2.1 VAE (16 channels, 4x time and 8x space compression) through host.VideoVAE.",
        )


def encode_y(vae: VideoVAE, reference: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """reference [3, H, W] in [-1, 1] -> y [20, T, h, w] (mask | VAE(reference + grey frames))."""
    _, height, width = reference.shape
    clip = torch.zeros(3, chunk_frames, height, width, dtype=torch.float32, device=reference.device)
    clip[:, 0] = reference
    latents = vae.encode(clip)
    _check_latents(latents, chunk_frames, height, width, "the reference clip")
    mask = first_frame_mask(latents.shape[1], latents.shape[2], latents.shape[3], latents.device)
    return torch.cat([mask, latents.float()], dim=0)


def encode_context(vae: VideoVAE, context_pixels: torch.Tensor) -> torch.Tensor:
    """[3, M, H, W] in [-1, 1] (M = 4k+1) -> clean context latents [16, k+1, h, w]."""
    _, frames, height, width = context_pixels.shape
    latents = vae.encode(context_pixels.float())
    _check_latents(latents, frames, height, width, "the context frames")
    return latents.float()


def encode_clip(image_encoder: ImageEncoder | None, reference: torch.Tensor) -> torch.Tensor | None:
    """[3, H, W] in [-1, 1] -> [1, 257, clip_dim], or None without an encoder."""
    if image_encoder is None:
        return None
    features = image_encoder.encode_image(reference)
    if features.ndim == 2:
        features = features[None]
    if features.ndim != 3 or features.shape[0] != 1:
        raise GenerationError(
            f"The image encoder returned {tuple(features.shape)}; expected [1, 257, clip_dim].",
            "Use a CLIP vision model's penultimate hidden states (ViT-H/14).",
        )
    return features


def encode_y_svi(vae: VideoVAE, motion: torch.Tensor, reference: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """motion [3, N, H, W] and reference [3, H, W] in [-1, 1] -> SVI-Talk's y [20, T, h, w]."""
    _, given, height, width = motion.shape
    pad = reference[:, None].expand(3, chunk_frames - given, height, width)
    latents = vae.encode(torch.cat([motion.float(), pad.float()], dim=1))
    _check_latents(latents, chunk_frames, height, width, "the SVI-Talk conditioning clip")
    mask = first_frame_mask(latents.shape[1], latents.shape[2], latents.shape[3], latents.device)
    return torch.cat([mask, latents.float()], dim=0)


def build_svi_conditioning(vae: VideoVAE, reference: torch.Tensor, motion: torch.Tensor, chunk_frames: int,
                           image_encoder: ImageEncoder | None = None) -> ChunkConditioning:
    """One SVI-Talk chunk's conditioning: y from the motion frames and the reference, CLIP of the first
    motion frame, no context latents."""
    return ChunkConditioning(encode_y_svi(vae, motion, reference, chunk_frames), None,
                             encode_clip(image_encoder, motion[:, 0]))


def build_conditioning(
    vae: VideoVAE,
    reference: torch.Tensor,
    context_pixels: torch.Tensor,
    chunk_frames: int,
    image_encoder: ImageEncoder | None = None,
) -> ChunkConditioning:
    """All of one chunk's conditioning. context_pixels: [3, 1, H, W] (first chunk) or [3, M, H, W]."""
    return ChunkConditioning(
        encode_y(vae, reference, chunk_frames),
        encode_context(vae, context_pixels),
        encode_clip(image_encoder, reference),
    )
