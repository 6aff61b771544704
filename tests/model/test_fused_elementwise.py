"""The fused elementwise path: non-matmul bytes per block, RoPE tables built once, parity in fp32 and bf16."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.model import dit as dit_module
from infinitetalk_core.model.config import DiTConfig, detect_dit_config
from infinitetalk_core.model.dit import InfiniteTalkDiT
from infinitetalk_core.model.rope import apply_rope, cos_sin, rope_3d_angles, rope_tables, set_fused_rope

REPO = Path(__file__).resolve().parents[2]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_non_matmul_bytes_per_block_at_14b_width():
    """Counted on the meta device at the real width and token count: <= 100 bytes per token·dim per block
    (was 376 with float32 islands, casts and a stacked RoPE)."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    counter, forward = load_bench("byte_counter"), load_bench("dit_forward")
    total, ops = counter.ours(DiTConfig(), forward.random_inputs, 480, 832, 81)
    assert total <= 100, ops
    assert "to" not in ops or ops["to"] < 0.5  # no activation-sized casts
    assert "stack" not in ops or ops["stack"] < 0.5


def test_rotate_pairs_equals_the_float32_rotation():
    grid, split = (3, 4, 6), (6, 5, 5)
    x = torch.randn(2, 72, 3, 32)
    expected = apply_rope(x, *(v[None, :, None] for v in cos_sin(rope_3d_angles(grid, split))))
    torch.testing.assert_close(rope_tables(grid, split, "cpu", torch.float32).rotate(x), expected,
                               atol=1e-6, rtol=1e-6)
    half = rope_tables(grid, split, "cpu", torch.bfloat16).rotate(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=3e-2, rtol=3e-2)


def _matrix_rotation(x, matrices):
    """What a fused kernel computes from the rotation matrices (the flux form), in float32."""
    pairs = x.float().unflatten(-1, (-1, 1, 2))
    return (matrices[..., 0] * pairs[..., 0] + matrices[..., 1] * pairs[..., 1]).flatten(-2).to(x.dtype)


@pytest.fixture
def fused_rope():
    calls = []
    yield lambda kernel, devices: set_fused_rope(lambda x, m: calls.append(x.shape) or kernel(x, m), devices), calls
    set_fused_rope(None)


def test_a_host_kernel_rotates_on_its_devices_only(fused_rope):
    install, calls = fused_rope
    grid, split = (3, 4, 6), (6, 5, 5)
    x = torch.randn(2, 72, 3, 32)
    expected = apply_rope(x, *(v[None, :, None] for v in cos_sin(rope_3d_angles(grid, split))))
    install(_matrix_rotation, ("cuda",))
    rope_tables(grid, split, "cpu", torch.float32).rotate(x)
    assert calls == []  # not registered for the CPU: the eager rotation
    install(_matrix_rotation, ("cpu",))
    tables = rope_tables(grid, split, "cpu", torch.bfloat16)
    assert tables.matrices.shape == (1, 72, 1, 16, 2, 2) and tables.matrices.dtype == torch.float32
    torch.testing.assert_close(tables.rotate(x), expected, atol=1e-6, rtol=1e-6)
    assert calls == [x.shape]


def test_comfy_kitchen_rotation_equals_ours(fused_rope):
    """ComfyUI's comfy-kitchen kernel (its CPU fallback here) with our matrices: the same rotation."""
    ck = pytest.importorskip("comfy_kitchen")
    install, calls = fused_rope
    grid, split = (3, 4, 6), (6, 5, 5)
    x = torch.randn(2, 72, 3, 32)
    eager = rope_tables(grid, split, "cpu", torch.float32).rotate(x)
    install(ck.apply_rope1, ("cpu",))
    torch.testing.assert_close(rope_tables(grid, split, "cpu", torch.float32).rotate(x), eager,
                               atol=1e-6, rtol=1e-6)
    assert calls


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    state = load_file(golden_dir / "dit" / "model_full.safetensors")
    heads = json.loads((golden_dir / "dit" / "model.json").read_text())["config"]["num_heads"]
    model = InfiniteTalkDiT(detect_dit_config({k: v.shape for k, v in state.items()}, num_heads=heads)).eval()
    model.load_state_dict(state)
    return model, load_file(golden_dir / "dit" / "dit_single.safetensors")


def _forward(model, f, dtype):
    audio = f["audio"].to(dtype)
    with torch.no_grad():
        return model(f["x"][None].to(dtype), f["t_0"], [f["context"].to(dtype)], clip_fea=f["clip_fea"].to(dtype),
                     y=f["y"].to(dtype), audio=audio, ref_target_masks=f["ref_target_masks"])


def test_bf16_stays_within_a_bound_of_float32(golden_model):
    model, fixture = golden_model
    exact = _forward(model, fixture, torch.float32)
    half = _forward(model.to(torch.bfloat16), fixture, torch.bfloat16)
    model.float()
    error = float((half - exact).norm() / exact.norm())
    assert error < 2e-2, error


def test_rope_tables_are_built_once_per_size(golden_model, monkeypatch):
    model, fixture = golden_model
    built = []
    real = dit_module.rope_tables
    monkeypatch.setattr(dit_module, "rope_tables", lambda *a: built.append(a[0]) or real(*a))
    model.__dict__.pop("_rope_cache", None)
    for _ in range(3):
        _forward(model, fixture, torch.float32)
    assert len(built) == 1


def test_blocks_get_a_contiguous_token_stream(golden_model):
    """A transposed stream would make every block's norms copy it and its adds run strided."""
    model, fixture = golden_model
    seen = []
    handles = [b.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
               for b in model.blocks]
    try:
        _forward(model, fixture, torch.float32)
    finally:
        for h in handles:
            h.remove()
    assert seen and all(seen)
