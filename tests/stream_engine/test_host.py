"""Host protocols: Wan 2.1 latent normalisation, the ComfyUI-convention adapter, the stand-in VAE contract."""

from __future__ import annotations

import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.conditioning import build_conditioning
from infinitetalk_core.stream.host import (
    WAN21_LATENT_MEAN,
    WAN21_LATENT_STD,
    TextContexts,
    VideoVAE,
    WanNormalizedVAE,
    denormalize_wan21_latents,
    normalize_wan21_latents,
    pixels_from_comfy,
    pixels_to_comfy,
)
from infinitetalk_core.stream.standin_vae import StandInVAE
from infinitetalk_core.stream.standins import StandInImageEncoder


class ComfyStyleVAE:
    """Speaks ComfyUI's dialect: [F, H, W, 3] in [0, 1] <-> raw (unnormalised) [1, 16, T, h, w]."""

    def __init__(self):
        self.inner = StandInVAE(3)

    def encode(self, images):
        assert images.ndim == 4 and images.shape[-1] == 3 and images.min() >= 0
        return denormalize_wan21_latents(self.inner.encode(pixels_from_comfy(images)))[None]

    def decode(self, raw):
        return pixels_to_comfy(self.inner.decode(normalize_wan21_latents(raw[0])))[None]


def test_normalisation_uses_the_wan21_vectors_and_round_trips():
    mu = torch.randn(2, 16, 3, 4, 4)
    z = normalize_wan21_latents(mu, channel_dim=1)
    assert z[0, 0, 0, 0, 0] == pytest.approx(
        (mu[0, 0, 0, 0, 0].item() - WAN21_LATENT_MEAN[0]) / WAN21_LATENT_STD[0]
    )
    assert WAN21_LATENT_STD[-1] == 1.9160 and WAN21_LATENT_MEAN[-1] == -0.2921
    torch.testing.assert_close(denormalize_wan21_latents(z, channel_dim=1), mu)
    with pytest.raises(InputValidationError, match="48 channels"):
        normalize_wan21_latents(torch.zeros(48, 1, 2, 2))


def test_comfy_adapter_matches_the_native_convention():
    adapter, native = WanNormalizedVAE(ComfyStyleVAE()), StandInVAE(3)
    assert isinstance(adapter, VideoVAE)
    pixels = torch.rand(3, 9, 16, 16) * 2 - 1
    torch.testing.assert_close(adapter.encode(pixels), native.encode(pixels), atol=1e-5, rtol=1e-5)
    z = native.encode(pixels)
    torch.testing.assert_close(adapter.decode(z), native.decode(z), atol=1e-5, rtol=1e-5)


def test_standin_vae_shape_contract_and_causality():
    vae = StandInVAE(0)
    pixels = torch.rand(3, 13, 32, 48) * 2 - 1
    z = vae.encode(pixels)
    assert z.shape == (16, 4, 4, 6)
    assert vae.decode(z).shape == (3, 13, 32, 48)
    changed = pixels.clone()
    changed[:, 5:] = 0.0  # frames of latent 2 onwards
    z2 = vae.encode(changed)
    assert z2[:, :2].equal(z[:, :2]) and not z2[:, 2:].equal(z[:, 2:])
    with pytest.raises(InputValidationError):
        vae.encode(torch.zeros(3, 4, 32, 32))


def test_conditioning_layout():
    vae, ref = StandInVAE(0), torch.rand(3, 32, 32) * 2 - 1
    first = build_conditioning(vae, ref, ref[:, None], 13, StandInImageEncoder(16))
    assert first.y.shape == (20, 4, 4, 4) and first.context_latents.shape == (16, 1, 4, 4)
    assert first.y[:4, 0].eq(1).all() and first.y[:4, 1:].eq(0).all()
    grey = torch.zeros(3, 13, 32, 32)
    grey[:, 0] = ref
    torch.testing.assert_close(first.y[4:], vae.encode(grey))  # reference + mid-grey (0.0) frames
    assert first.clip_features.shape == (1, 257, 16)
    later = build_conditioning(vae, ref, torch.zeros(3, 5, 32, 32), 13, None)
    assert later.context_latents.shape == (16, 2, 4, 4) and later.clip_features is None


def test_text_contexts_hold_the_last_prompt():
    pairs = tuple((torch.full((2, 4), float(i)), torch.zeros(3, 4)) for i in range(2))
    text = TextContexts(pairs)
    assert text.for_chunk(0)[0][0, 0] == 0 and text.for_chunk(5)[0][0, 0] == 1
    assert text.fingerprint() != TextContexts(pairs[:1]).fingerprint()
