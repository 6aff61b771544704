"""Numerical parity with the reference InfiniteTalk DiT on the golden tiny model (fp32, atol/rtol 1e-4).

The weights are loaded straight into the model (safetensors + strict load_state_dict); the real loader
has its own parity test in tests/loading/.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.model.config import detect_dit_config
from infinitetalk_core.model.dit import InfiniteTalkDiT

TOL = dict(atol=1e-4, rtol=1e-4)
CASES = [
    ("dit_single", "t0"),
    ("dit_single", "t1"),
    ("dit_single", "null_audio_t0"),
    ("dit_single", "neg_context_t1"),
    ("dit_multi", "t0"),
    ("dit_multi", "t1"),
    ("dit_multi", "swapped_t0"),
]
# every case must check at least these intermediates (stored or through dbg_aliases)
ALWAYS = {
    "e",
    "e0",
    "text_context",
    "img_context",
    "patch_tokens",
    "audio_tokens",
    "block0.audio_attn_out",
    "block1.audio_attn_out",
    "block0.out",
    "block1.out",
}
ROUTING = {f"block{i}.{name}" for i in (0, 1) for name in ("x_ref_attn_map", "audio_q_pos", "audio_k_pos")}


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    state = load_file(golden_dir / "dit" / "model_full.safetensors")
    heads = json.loads((golden_dir / "dit" / "model.json").read_text())["config"]["num_heads"]
    config = detect_dit_config({k: v.shape for k, v in state.items()}, num_heads=heads)
    assert config.head_dim == 32 and config.rope_split == (6, 5, 5)
    model = InfiniteTalkDiT(config).eval()
    model.load_state_dict(state, strict=True)
    return model


def case_inputs(fixture: dict, case: str) -> dict:
    audio = {"null_audio": torch.zeros_like(fixture["audio"]), "swapped": fixture.get("audio_swapped")}
    return dict(
        t=fixture["t_1" if case.endswith("t1") else "t_0"],
        context=[fixture["context_neg" if case.startswith("neg_context") else "context"]],
        audio=audio.get(case.rsplit("_", 1)[0], fixture["audio"]),
    )


def expected_intermediates(fixture: dict, meta: dict, case: str) -> dict[str, torch.Tensor]:
    suffix = f"@{case}"
    found = {
        k[4 : -len(suffix)]: v for k, v in fixture.items() if k.startswith("dbg.") and k.endswith(suffix)
    }
    for alias, target in meta["dbg_aliases"].items():
        if alias.endswith(suffix):
            found[alias[4 : -len(suffix)]] = fixture[target]
    return found


@pytest.mark.parametrize("name,case", CASES)
def test_forward_matches_reference(golden_model, golden_dir, name, case):
    fixture = load_file(golden_dir / "dit" / f"{name}.safetensors")
    meta = json.loads((golden_dir / "dit" / f"{name}.json").read_text())
    inputs, debug = case_inputs(fixture, case), {}
    with torch.inference_mode():
        out = golden_model(
            fixture["x"][None],
            inputs["t"],
            inputs["context"],
            fixture["clip_fea"],
            fixture["y"],
            inputs["audio"],
            fixture["ref_target_masks"],
            debug=debug,
        )
    torch.testing.assert_close(out[0], fixture[f"out_{case}"], **TOL)

    expected = expected_intermediates(fixture, meta, case)
    # the golden stores intermediates for every case except the swapped-speakers output
    required = set() if case == "swapped_t0" else ALWAYS | (ROUTING if name == "dit_multi" else set())
    assert required <= set(expected), f"golden lacks {sorted(required - set(expected))}"
    for key, want in expected.items():
        mine = debug[key]
        assert mine.numel() == want.numel(), key
        torch.testing.assert_close(
            mine.reshape(want.shape), want, **TOL, msg=lambda m, key=key: f"{key}: {m}"
        )
    if name == "dit_single":  # one speaker: routing is skipped, so it leaves no trace
        assert not any(k.endswith(("x_ref_attn_map", "audio_q_pos", "audio_k_pos")) for k in debug)


def test_swapping_speakers_changes_output(golden_model, golden_dir):
    fixture = load_file(golden_dir / "dit" / "dit_multi.safetensors")
    with torch.inference_mode():
        outs = [
            golden_model(
                fixture["x"][None],
                fixture["t_0"],
                [fixture["context"]],
                fixture["clip_fea"],
                fixture["y"],
                fixture[a],
                fixture["ref_target_masks"],
            )
            for a in ("audio", "audio_swapped")
        ]
    assert (outs[0] - outs[1]).abs().max() > 0.5  # the reference changes by ≈ 1.15


def test_base_and_audio_files_split_the_state_dict(golden_dir):
    base = load_file(golden_dir / "dit" / "model_base.safetensors")
    audio = load_file(golden_dir / "dit" / "model_infinitetalk.safetensors")
    model = InfiniteTalkDiT(
        detect_dit_config({k: v.shape for k, v in base.items()}, num_heads=2), device="meta"
    )
    assert set(model.state_dict()) == set(base)
    full = InfiniteTalkDiT(detect_dit_config({k: v.shape for k, v in {**base, **audio}.items()}, num_heads=2))
    full.load_state_dict({**base, **audio}, strict=True)
