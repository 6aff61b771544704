"""Tiny random components for end-to-end tests and CPU benchmarks of the streaming engine.

``tiny_dit`` builds the real ``InfiniteTalkDiT`` class (real key layout) at toy sizes with seeded random
weights; ``StandInImageEncoder`` maps a frame to [1, 257, clip_dim] deterministically; together with
``standin_vae.StandInVAE`` the whole engine runs in seconds without any downloaded weights.
Nothing here is used on the production path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.config import AudioConfig, DiTConfig

CLIP_TOKENS = 257


def tiny_dit_config(
    dim: int = 32, num_layers: int = 1, audio_layers: int = 2, audio_width: int = 8
) -> DiTConfig:
    """A DiT config small enough for CPU tests (head_dim 16, text 16 wide, CLIP 16 wide)."""
    audio = AudioConfig(
        feature_dim=audio_layers * audio_width, intermediate_dim=16, output_dim=16, context_tokens=4
    )
    return DiTConfig(
        dim=dim,
        ffn_dim=2 * dim,
        num_layers=num_layers,
        num_heads=dim // 16,
        text_dim=16,
        clip_dim=16,
        audio=audio,
    )


@torch.no_grad()
def randomize_parameters(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded init in sorted key order: matrices N(0, 1/fan_in), biases N(0, 0.1), 1-D scales 1 + N(0, 0.1),
    modulation N(0, 0.3) (as the golden fixtures' tiny models; the reference zero-inits the head)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "modulation" in name:
            value = 0.3 * torch.randn(p.shape, generator=g)
        elif p.ndim >= 2:
            value = torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5)
        elif name.endswith("bias"):
            value = 0.1 * torch.randn(p.shape, generator=g)
        else:
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        p.copy_(value.to(p.dtype))
    return model


def tiny_dit(
    seed: int = 0,
    config: DiTConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The real InfiniteTalkDiT at toy size with seeded random weights, in eval mode."""
    from ..model.dit import InfiniteTalkDiT

    model = InfiniteTalkDiT(config or tiny_dit_config(), device="cpu", dtype=torch.float32)
    randomize_parameters(model, seed)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class StandInImageEncoder:
    """Deterministic CLIP stand-in: 16x16 average-pooled frame -> 256 patch tokens + a mean token."""

    def __init__(self, clip_dim: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(3, clip_dim, generator=g)

    def encode_image(self, frame: torch.Tensor) -> torch.Tensor:
        """[3, H, W] in [-1, 1] -> [1, 257, clip_dim]."""
        pooled = F.adaptive_avg_pool2d(frame.float()[None].cpu(), 16)[0]  # [3, 16, 16]
        patches = pooled.flatten(1).T  # [256, 3]
        tokens = torch.cat([patches.mean(0, keepdim=True), patches]) @ self.proj
        return tokens[None].to(frame.device)


def random_audio_features(frames: int, layers: int = 2, width: int = 8, seed: int = 0) -> torch.Tensor:
    """[frames, layers, width] float32 stand-in wav2vec2 features."""
    return torch.randn(frames, layers, width, generator=torch.Generator().manual_seed(seed))
