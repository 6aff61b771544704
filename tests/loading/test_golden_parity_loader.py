"""Golden parity through the real loader: the reference's tiny weight files -> forward -> outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.model.loading import load_infinitetalk_model


TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}  # golden/README.md, dit outputs


@pytest.fixture(scope="module")
def num_heads(golden_dir) -> int:
    return json.loads((golden_dir / "dit" / "model.json").read_text())["config"]["num_heads"]


@pytest.mark.parametrize("base_name", ["model_base.safetensors", "model_base_comfy_prefixed.safetensors"])
@pytest.mark.parametrize("case", ["dit_single", "dit_multi"])
def test_golden_outputs_through_loader(golden_dir, num_heads, base_name, case):
    dit = golden_dir / "dit"
    model, report = load_infinitetalk_model(
        dit / base_name, dit / "model_infinitetalk.safetensors", dtype=torch.float32, num_heads=num_heads
    )
    assert report.loaded_keys == 113 and report.audio_keys == 26
    g = load_file(dit / f"{case}.safetensors")
    with torch.no_grad():
        out = model(
            g["x"][None], g["t_0"], [g["context"]], g["clip_fea"], g["y"], [g["audio"]], g["ref_target_masks"]
        )
    torch.testing.assert_close(out[0], g["out_t0"], **TOLERANCE)


def test_golden_full_file_matches_split_files(golden_dir, num_heads):
    """model_full.safetensors (base ∪ audio in one file) loads to the same weights as the two files."""
    dit = golden_dir / "dit"
    full, _ = load_infinitetalk_model(
        dit / "model_full.safetensors", dtype=torch.float32, num_heads=num_heads
    )
    split, _ = load_infinitetalk_model(
        dit / "model_base.safetensors",
        dit / "model_infinitetalk.safetensors",
        dtype=torch.float32,
        num_heads=num_heads,
    )
    a, b = full.state_dict(), split.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
