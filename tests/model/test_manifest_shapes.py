"""The full-size model, built on the meta device from configs detected from the manifests, has exactly the
manifests' keys and shapes (base Wan2.1-I2V-14B alone and merged with each audio file)."""

from __future__ import annotations

import json

import pytest

from infinitetalk_core.model.config import detect_dit_config
from infinitetalk_core.model.dit import InfiniteTalkDiT

BASE = "wan21_i2v_14b_480p.json"
AUDIO_FILES = ("infinitetalk_single.json", "infinitetalk_multi.json", "multitalk.json")


def manifest_tensors(manifests_dir, name: str) -> dict[str, tuple[int, ...]]:
    manifest = json.loads((manifests_dir / name).read_text())
    if manifest.get("tensors") is None:  # multi / multitalk share the single file's names and shapes
        return manifest_tensors(manifests_dir, manifest["tensors_from"])
    return {k: tuple(v) for k, v in manifest["tensors"].items()}


def model_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    model = InfiniteTalkDiT(detect_dit_config(shapes), device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_base_model_matches_manifest(manifests_dir):
    base = manifest_tensors(manifests_dir, BASE)
    config = detect_dit_config(base)
    assert (config.dim, config.num_heads, config.num_layers, config.audio) == (5120, 40, 40, None)
    assert len(base) == 1303
    assert model_shapes(base) == base


@pytest.mark.parametrize("audio_file", AUDIO_FILES)
def test_merged_model_matches_manifests(manifests_dir, audio_file):
    base, audio = manifest_tensors(manifests_dir, BASE), manifest_tensors(manifests_dir, audio_file)
    merged = {**base, **audio}
    assert len(merged) == 1633  # the two key sets are disjoint
    config = detect_dit_config(merged)
    assert config.audio is not None and config.audio.feature_dim == 12 * 768
    assert config.audio.context_tokens == 32 and config.rope_split == (22, 21, 21)
    assert model_shapes(merged) == merged
