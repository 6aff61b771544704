"""Tiny end-to-end setup for the streaming engine: the real DiT class at toy size, stand-in VAE/CLIP."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from infinitetalk_core.sampling.guidance import GuidanceConfig
from infinitetalk_core.stream.host import TextContexts
from infinitetalk_core.stream.plan import plan_chunks
from infinitetalk_core.stream.settings import StreamSettings
from infinitetalk_core.stream.sources import TensorReference
from infinitetalk_core.stream.standin_vae import StandInVAE
from infinitetalk_core.stream.standins import StandInImageEncoder, random_audio_features, tiny_dit

CHUNK, CONTEXT = 13, 5  # 4n+1 / 4k+1; stride 8 frames: several chunks stay cheap
SIZE = 32


@dataclass
class Inputs:
    model: torch.nn.Module
    vae: StandInVAE
    encoder: StandInImageEncoder
    references: TensorReference
    features: torch.Tensor
    text: TextContexts
    settings: StreamSettings

    def plan(self, frames: int | None = None, **kw):
        return plan_chunks(frames or self.features.shape[0], CHUNK, CONTEXT, **kw)

    def args(self, plan):
        return (self.model, self.vae, plan, self.references, self.features, self.text, self.settings)


@pytest.fixture(scope="session")
def model():
    return tiny_dit(seed=0)


@pytest.fixture
def make_inputs(model):
    def make(frames: int = 30, seed: int = 0, **settings) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        image = torch.rand(3, 1, SIZE, SIZE, generator=g) * 2 - 1
        text = TextContexts.single(torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g))
        # colour off by default (it is exercised where it matters: resume, in-loop order, V2V)
        base = dict(steps=2, guidance=GuidanceConfig(5.0, 4.0), seed=7, color_method="none")
        base.update(settings)
        return Inputs(
            model,
            StandInVAE(0),
            StandInImageEncoder(16),
            TensorReference(image),
            random_audio_features(frames, seed=seed),
            text,
            StreamSettings(**base),
        )

    return make
