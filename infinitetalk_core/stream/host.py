"""What the streaming engine needs from its host: a video VAE, text contexts, a CLIP image encoder.

Nothing here loads a model. The host (ComfyUI's native loaders in ``nodes/``, a plain-torch host in tests)
hands objects that satisfy these protocols to ``generate_chunks``.

Conventions the engine relies on (the reference pipeline's, spec §1.1):
- pixels are ``[3, F, H, W]`` float in [-1, 1];
- latents are ``[16, 1 + (F - 1) // 4, H / 8, W / 8]`` and already *normalised* per channel as
  ``(mu - mean_c) / std_c`` with the Wan 2.1 vectors below.

ComfyUI's native VAE speaks another dialect (pixels ``[F, H, W, 3]`` in [0, 1], unnormalised latents
``[B, 16, T, h, w]``); ``WanNormalizedVAE`` translates, so the node layer only wraps the object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from ..errors import InputValidationError

# Wan 2.1 VAE per-channel latent statistics (Wan2.1 wan/modules/vae.py, WanVAE.__init__).
WAN21_LATENT_MEAN = (
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
)
WAN21_LATENT_STD = (
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
)
LATENT_CHANNELS = 16
VAE_TIME_STRIDE = 4
VAE_SPACE_STRIDE = 8


@runtime_checkable
class VideoVAE(Protocol):
    """A Wan 2.1-compatible video VAE working in normalised latent space."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[3, F, H, W] in [-1, 1] -> normalised latents [16, 1 + (F-1)//4, H/8, W/8]."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [16, T, h, w] -> pixels [3, 1 + 4(T-1), 8h, 8w] in [-1, 1]."""
        ...


@runtime_checkable
class ImageEncoder(Protocol):
    """CLIP vision tower as the reference uses it (ViT-H/14, penultimate block, all 257 tokens)."""

    def encode_image(self, frame: torch.Tensor) -> torch.Tensor:
        """[3, H, W] in [-1, 1] -> [1, 257, clip_dim]."""
        ...


def _channel_view(vector: Sequence[float], latents: torch.Tensor, channel_dim: int) -> torch.Tensor:
    shape = [1] * latents.ndim
    shape[channel_dim] = LATENT_CHANNELS
    return torch.tensor(vector, dtype=torch.float32, device=latents.device).view(shape)


def normalize_wan21_latents(mu: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Raw VAE posterior mean -> model latents: ``(mu - mean) / std`` per channel (fp32 result).

    ``channel_dim`` is 0 for ``[16, T, h, w]`` and 1 for ComfyUI's ``[B, 16, T, h, w]``.
    """
    if mu.shape[channel_dim] != LATENT_CHANNELS:
        raise InputValidationError(
            f"VAE latents have {mu.shape[channel_dim]} channels at dim {channel_dim} (shape "
            f"{tuple(mu.shape)}); Wan 2.1 latents have 16.",
            "Use the Wan 2.1 VAE (wan_2.1_vae.safetensors); the Wan 2.2 VAE has 48 channels.",
        )
    mean = _channel_view(WAN21_LATENT_MEAN, mu, channel_dim)
    std = _channel_view(WAN21_LATENT_STD, mu, channel_dim)
    return (mu.float() - mean) / std


def denormalize_wan21_latents(latents: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Inverse of ``normalize_wan21_latents``: ``latents * std + mean`` (fp32 result)."""
    mean = _channel_view(WAN21_LATENT_MEAN, latents, channel_dim)
    std = _channel_view(WAN21_LATENT_STD, latents, channel_dim)
    return latents.float() * std + mean


def pixels_to_comfy(pixels: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> ComfyUI IMAGE batch [F, H, W, 3] in [0, 1]."""
    return ((pixels.float() + 1.0) * 0.5).clamp(0.0, 1.0).permute(1, 2, 3, 0).contiguous()


def pixels_from_comfy(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [F, H, W, 3] (or [B, F, H, W, 3]) in [0, 1] -> [3, F, H, W] in [-1, 1]."""
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return (images.float() * 2.0 - 1.0).permute(3, 0, 1, 2).contiguous()


class WanNormalizedVAE:
    """Adapts a VAE with ComfyUI's conventions to ``VideoVAE``.

    ``inner.encode(images [F, H, W, 3] in [0, 1]) -> [1, 16, T, h, w]`` raw posterior mean;
    ``inner.decode(raw [1, 16, T, h, w]) -> [F, H, W, 3]`` or ``[1, F, H, W, 3]`` in [0, 1].
    That is what ``comfy.sd.VAE`` does for Wan 2.1; the node layer passes it in unchanged.
    """

    def __init__(self, inner, device: torch.device | str | None = None):
        self.inner = inner
        self.device = device

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raw = self.inner.encode(pixels_to_comfy(pixels))
        if raw.ndim == 5:
            raw = raw[0]
        latents = normalize_wan21_latents(raw, channel_dim=0)
        return latents if self.device is None else latents.to(self.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raw = denormalize_wan21_latents(latents, channel_dim=0).unsqueeze(0)
        images = self.inner.decode(raw)
        pixels = pixels_from_comfy(images)
        return pixels if self.device is None else pixels.to(self.device)


@dataclass(frozen=True)
class TextContexts:
    """Text-encoder outputs per chunk: ``chunks[i] = (positive [Lp, D], negative [Ln, D])``, unpadded.

    Chunk ``i`` uses entry ``min(i, len - 1)``: one pair serves every chunk, and a list shorter than
    the chunk count holds its last prompt ("prompt travel" as in the wrapper's ``|`` syntax).
    """

    chunks: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def __post_init__(self):
        if not self.chunks:
            raise InputValidationError(
                "No text contexts were given.", "Pass at least one (positive, negative) pair."
            )
        width = None
        for i, pair in enumerate(self.chunks):
            if len(pair) != 2:
                raise InputValidationError(
                    f"Text context {i} is not a (positive, negative) pair.",
                    "Give each chunk a tuple of two tensors [tokens, text_dim].",
                )
            for t in pair:
                if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] < 1:
                    raise InputValidationError(
                        f"Text context {i} holds a tensor of shape "
                        f"{getattr(t, 'shape', type(t).__name__)}; expected [tokens >= 1, text_dim].",
                        "Pass the encoder output without the batch dimension.",
                    )
                if width is not None and t.shape[1] != width:
                    raise InputValidationError(
                        f"Text contexts have different widths ({width} and {t.shape[1]}).",
                        "Encode every prompt with the same text encoder (umt5-xxl, 4096).",
                    )
                width = t.shape[1]

    @classmethod
    def single(cls, positive: torch.Tensor, negative: torch.Tensor) -> "TextContexts":
        return cls(((positive, negative),))

    @property
    def text_dim(self) -> int:
        return int(self.chunks[0][0].shape[1])

    def for_chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chunks[min(index, len(self.chunks) - 1)]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for positive, negative in self.chunks:
            for t in (positive, negative):
                digest.update(tensor_digest(t).encode())
        return digest.hexdigest()


DIGEST_SLICE_BYTES = 16 << 20  # hash big tensors (hours of audio features) 16 MB at a time


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (for job manifests), read in 16 MB slices so that
    hashing never copies the whole tensor (two hours of fp32 audio features are ~6 GB)."""
    c = t.detach()
    digest = hashlib.sha256(f"{c.dtype}|{tuple(c.shape)}|".encode())
    for part in _byte_slices(c):  # any dtype, bf16/fp8 included (viewed as bytes)
        digest.update(part.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _byte_slices(t: torch.Tensor):
    """Contiguous CPU pieces of ``t`` in memory order, each at most ~16 MB (views where possible)."""
    if t.is_contiguous() or t.ndim == 0:
        flat = t.reshape(-1)
        step = max(1, DIGEST_SLICE_BYTES // max(1, t.element_size()))
        for i in range(0, flat.numel(), step):
            yield flat[i:i + step].to("cpu").contiguous()
        return
    row_bytes = max(1, t[0].numel() * t.element_size()) if t.shape[0] else 1
    if row_bytes > DIGEST_SLICE_BYTES:  # one row is already big: go one dimension deeper
        for i in range(t.shape[0]):
            yield from _byte_slices(t[i])
        return
    rows = max(1, DIGEST_SLICE_BYTES // row_bytes)
    for i in range(0, t.shape[0], rows):
        yield t[i:i + rows].to("cpu").contiguous().reshape(-1)
