"""A deterministic stand-in for the Wan 2.1 VAE, for tests and CPU benchmarks.

It keeps the real shape contract (16 channels, 4x in time with a causal first frame, 8x in space,
normalised latents in, [-1, 1] pixels out) at negligible cost, so the streaming engine can be run end
to end without the 250 MB VAE. It is not a codec: encode averages 8x8 patches and time groups
(frame 0 alone, then 4 frames per latent) and mixes the three colour channels into 16 with a fixed
seeded matrix; decode inverts the mix, interpolates between latents in time and upsamples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputValidationError
from .host import LATENT_CHANNELS, VAE_SPACE_STRIDE, VAE_TIME_STRIDE


class StandInVAE:
    """Implements ``host.VideoVAE``; the same ``seed`` always gives the same mapping."""

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu"):
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(LATENT_CHANNELS, 3, generator=g).to(device)  # [16, 3]
        self.bias = (0.1 * torch.randn(LATENT_CHANNELS, generator=g)).to(device)
        self.unmix = torch.linalg.pinv(self.mix)  # [3, 16]
        self.device = torch.device(device)
        self.identity = f"standin-vae-seed{seed}"  # recorded in job manifests

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[3, F, H, W] in [-1, 1] -> [16, 1 + (F-1)//4, H/8, W/8]."""
        c, frames, h, w = pixels.shape
        if c != 3 or (frames - 1) % VAE_TIME_STRIDE or h % VAE_SPACE_STRIDE or w % VAE_SPACE_STRIDE:
            raise InputValidationError(
                f"VAE input has shape {tuple(pixels.shape)}; expected [3, 4k+1, 8a, 8b].",
                "Use 4k+1 frames and sizes divisible by 8.",
            )
        x = pixels.to(self.device, torch.float32)
        first = x[:, :1]
        rest = x[:, 1:].reshape(3, (frames - 1) // VAE_TIME_STRIDE, VAE_TIME_STRIDE, h, w).mean(2)
        grouped = torch.cat([first, rest], dim=1)  # [3, T, H, W]
        pooled = F.avg_pool2d(grouped, VAE_SPACE_STRIDE)  # [3, T, h, w]
        return torch.einsum("kc,cthw->kthw", self.mix, pooled) + self.bias.view(-1, 1, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[16, T, h, w] -> [3, 1 + 4(T-1), 8h, 8w] in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[0] != LATENT_CHANNELS:
            raise InputValidationError(
                f"VAE latents have shape {tuple(latents.shape)}; expected [16, T, h, w].",
                "Pass one video's latents without a batch dimension.",
            )
        z = latents.to(self.device, torch.float32) - self.bias.view(-1, 1, 1, 1)
        colour = torch.einsum("ck,kthw->cthw", self.unmix, z)  # [3, T, h, w]
        frames = [colour[:, :1]]
        for k in range(1, colour.shape[1]):
            # frames 4k-3 .. 4k blend from latent k-1 towards latent k (causal, smooth in time)
            weights = torch.arange(1, VAE_TIME_STRIDE + 1, device=z.device, dtype=z.dtype) / VAE_TIME_STRIDE
            w = weights.view(1, -1, 1, 1)
            frames.append((1 - w) * colour[:, k - 1 : k] + w * colour[:, k : k + 1])
        video = torch.cat(frames, dim=1)
        video = F.interpolate(video, scale_factor=VAE_SPACE_STRIDE, mode="nearest")
        return video.clamp(-1.0, 1.0)
