"""Tiny InfiniteTalk models written into tmp_path in the real file layouts, for the loader tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from infinitetalk_core.model.config import AudioConfig, DiTConfig
from infinitetalk_core.model.dit import InfiniteTalkDiT
from infinitetalk_core.model.layouts import is_audio_key

TINY = DiTConfig(
    dim=64,
    ffn_dim=128,
    num_layers=2,
    num_heads=2,
    text_dim=32,
    clip_dim=32,
    audio=AudioConfig(feature_dim=48, intermediate_dim=32, output_dim=24, context_tokens=4),
)


class TinyFiles:
    """A random tiny model's state dict and writers for each layout (one instance per test)."""

    config = TINY
    head_dim = TINY.head_dim

    def __init__(self, root: Path):
        self.root = root
        gen = torch.Generator().manual_seed(1234)
        model = InfiniteTalkDiT(TINY, device="meta")
        self.state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in model.state_dict().items()}
        self.base = {k: v for k, v in self.state.items() if not is_audio_key(k)}
        self.audio = {k: v for k, v in self.state.items() if is_audio_key(k)}

    def write(self, name: str, tensors: dict, prefix: str = "", metadata: dict | None = None) -> Path:
        path = self.root / name
        save_file({prefix + k: v.clone() for k, v in tensors.items()}, path, metadata=metadata)
        return path

    def write_shards(self, folder: str, tensors: dict, shards: int = 3) -> Path:
        """Original Wan layout: N shards + diffusion_pytorch_model.safetensors.index.json."""
        d = self.root / folder
        d.mkdir()
        keys = list(tensors)
        weight_map = {}
        for i in range(shards):
            name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = keys[i::shards]
            save_file({k: tensors[k].contiguous() for k in part}, d / name)
            weight_map.update({k: name for k in part})
        index = {
            "metadata": {"total_size": sum(v.numel() * 4 for v in tensors.values())},
            "weight_map": weight_map,
        }
        (d / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
        (d / "config.json").write_text("{}")
        return d

    @staticmethod
    def is_linear_weight(key: str, tensor: torch.Tensor) -> bool:
        return key.endswith(".weight") and tensor.dim() == 2

    def fp8_scaled(
        self, tensors: dict, scale_name: str = "scale_weight", scale_shape=(), extras: bool = True
    ) -> tuple[dict, dict]:
        """(file tensors, expected float32 weights) for a scaled-fp8 file of ``tensors``."""
        out, expected = {}, {}
        for key, t in tensors.items():
            if self.is_linear_weight(key, t):
                scale = t.abs().max() / 448.0
                q = (t / scale).to(torch.float8_e4m3fn)
                module = key[: -len(".weight")]
                out[key] = q
                out[f"{module}.{scale_name}"] = scale.reshape(scale_shape).float()
                if extras:
                    out[f"{module}.{'scale_input' if scale_name == 'scale_weight' else 'input_scale'}"] = (
                        torch.tensor(1.0)
                    )
                expected[key] = q.float() * scale
            else:
                out[key] = t.half()
                expected[key] = t.half().float()
        if extras:
            out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        return out, expected


@pytest.fixture
def tiny(tmp_path) -> TinyFiles:
    return TinyFiles(tmp_path)


def forward_inputs(config: DiTConfig = TINY, seed: int = 0, audio_layers: int = 3) -> dict:
    """One small forward call's inputs for ``config`` (T=2 latent frames, 4x4 latents, one speaker whose
    features are ``audio_layers`` x feature_dim / audio_layers)."""
    g = torch.Generator().manual_seed(seed)
    a = config.audio
    return dict(
        x=torch.randn(1, 16, 2, 4, 4, generator=g),
        t=torch.tensor([500.0]),
        context=[torch.randn(7, config.text_dim, generator=g)],
        clip_fea=torch.randn(1, 257, config.clip_dim, generator=g),
        y=torch.randn(1, 20, 2, 4, 4, generator=g),
        audio=[torch.randn(1, 5, a.window, audio_layers, a.feature_dim // audio_layers, generator=g)],
    )


@pytest.fixture
def tiny_inputs() -> dict:
    return forward_inputs()
