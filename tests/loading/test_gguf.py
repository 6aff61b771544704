"""GGUF DiT / InfiniteTalk files (city96's and Kijai's layouts) load, stay quantized and match their twins.

Every file is a tiny InfiniteTalk DiT (dim 256, so K-quant rows of 256 fit) written by the gguf package's
own writer in city96's key layout and per-tensor types (tests/loading/gguf_fixtures.py). Two twins:

- the *float twin*: the original float32 weights as safetensors; the GGUF model's output differs from it
  by the quantization error, bounded per type below (measured, ~30 % headroom);
- the *dequantized twin*: the GGUF's values as the gguf package dequantizes them, as safetensors; the
  GGUF model must match it to float rounding (our dequantization is bit-exact, tests/model/...).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import infinitetalk_core.model.gguf_quants as gq
from infinitetalk_core.model.checkpoint import iter_tensors, read_header
from infinitetalk_core.model.gguf import gguf_layers, logical_shapes, split_gguf_patches, storage_bytes
from infinitetalk_core.model.layouts import is_audio_key, is_block_quantized
from infinitetalk_core.model.loading import load_infinitetalk_model
from infinitetalk_core.model.lora import load_lora, merge_lora
from tests.loading.gguf_fixtures import (
    dequantized_state,
    file_type,
    forward_inputs,
    quantize,
    tiny_state,
    write_gguf,
)

# relative Frobenius error of the model output vs the float twin; measured (seed 0): F16 3.5e-4,
# BF16 3.2e-3, Q8_0 5.5e-3, Q6_K 2.3e-2, Q5_K 3.5e-2, Q5_1 3.9e-2, Q5_0 4.4e-2, Q4_K 6.9e-2,
# Q4_0 7.8e-2, Q4_1 8.1e-2 (K-quants from the fixtures' simple quantizers, not llama.cpp's search)
BOUNDS = {"F16": 5e-4, "BF16": 4.5e-3, "Q8_0": 7.5e-3, "Q6_K": 3e-2, "Q5_K": 4.5e-2, "Q5_1": 5e-2,
          "Q5_0": 5.5e-2, "Q4_K": 9e-2, "Q4_0": 0.1, "Q4_1": 0.1}
TWIN_RTOL = 1e-5  # GGUF vs dequantized twin: float32 rounding only


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The float state, its float twin file and output, and a writer of GGUFs per type (cached)."""
    root = tmp_path_factory.mktemp("gguf")
    state = tiny_state()
    twin = root / "float_twin.safetensors"
    save_file(state, twin)
    model, _ = load_infinitetalk_model(twin, dtype=torch.float32)
    inputs = forward_inputs()
    with torch.no_grad():
        reference = model(**inputs)
    files = {}

    def gguf_file(qtype: str):
        if qtype not in files:
            types = {k: file_type(k, v, qtype) for k, v in state.items()}
            files[qtype] = write_gguf(root / f"wan-tiny-{qtype}.gguf", state, types)
        return files[qtype]

    return dict(root=root, state=state, twin=twin, inputs=inputs, reference=reference, gguf=gguf_file)


def _run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def _dequantized_twin(path, root):
    twin = root / (path.stem + "_dequantized.safetensors")
    save_file(dequantized_state(path), twin)
    return twin


@pytest.mark.parametrize("qtype", sorted(BOUNDS))
def test_forward_matches_the_float_twin_within_the_type_error(world, qtype):
    model, report = load_infinitetalk_model(world["gguf"](qtype), dtype=torch.float32)
    error = _rel(_run(model, world["inputs"]), world["reference"])
    assert error < BOUNDS[qtype], (qtype, error)
    block = qtype not in ("F16", "BF16")
    assert (report.gguf_weights > 0) == block and report.gguf_kept == report.gguf_weights
    assert "GGUF weights" in report.summary() if block else "GGUF" not in report.summary()


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q5_0"])
def test_forward_equals_the_dequantized_twin(world, qtype):
    path = world["gguf"](qtype)
    model, _ = load_infinitetalk_model(path, dtype=torch.float32)
    twin, _ = load_infinitetalk_model(_dequantized_twin(path, world["root"]), dtype=torch.float32)
    assert _rel(_run(model, world["inputs"]), _run(twin, world["inputs"])) < TWIN_RTOL


def _swapped_nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs >> 4, qs & 0x0F], dim=-1)


def _swapped_k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    chunks = qs.unflatten(1, (4, 32))
    return torch.stack([chunks >> 4, chunks & 0x0F], dim=2).flatten(1, 2)


def _unsigned_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return gq._half(blocks, 0) * blocks[:, 2:34].float()


BREAKS = {  # a plausible bug per type: nibble halves swapped, int8 codes read as uint8
    "Q4_0": lambda mp: mp.setattr(gq, "_nibbles", _swapped_nibbles),
    "Q4_K": lambda mp: mp.setattr(gq, "_k_nibbles", _swapped_k_nibbles),
    "Q8_0": lambda mp: mp.setitem(gq._DEQUANTIZERS, "Q8_0", _unsigned_q8_0),
}


@pytest.mark.parametrize("qtype", sorted(BREAKS))
def test_a_wrong_dequantization_fails_the_bounds(world, qtype, monkeypatch):
    BREAKS[qtype](monkeypatch)
    model, _ = load_infinitetalk_model(world["gguf"](qtype), dtype=torch.float32)
    assert _rel(_run(model, world["inputs"]), world["reference"]) > 2 * BOUNDS[qtype]


def test_weights_stay_quantized_in_memory(world):
    path = world["gguf"]("Q4_K")
    header = read_header(path)
    model, _ = load_infinitetalk_model(path, dtype=torch.bfloat16)
    layers = dict(gguf_layers(model))
    block_entries = {k: e for k, e in header.entries.items() if is_block_quantized(e)}
    assert {f"{n}.weight" for n in layers} == set(block_entries)
    kept = sum(m.weight.numel() * m.weight.element_size() for m in layers.values())
    assert kept == sum(e.end - e.start for e in block_entries.values())
    assert all(m.weight.dtype == torch.uint8 for m in layers.values())
    assert all(m.weight.shape[0] == m.gguf_shape[0] for m in layers.values())  # rows of block bytes
    numel = sum(int(np.prod(e.shape)) for e in block_entries.values())
    assert kept / (4 * numel) == 144 / 1024  # 4.5 bits per weight
    file_data = sum(e.end - e.start for e in header.entries.values())
    fp32 = sum(v.numel() * 4 for v in world["state"].values())
    assert 0.7 * file_data < storage_bytes(model) <= file_data < 0.5 * fp32


def test_lora_on_gguf_equals_lora_on_the_dequantized_model(world, tmp_path):
    path = world["gguf"]("Q4_K")
    g = torch.Generator().manual_seed(9)
    lora = {}
    for module, (out, inp) in {"blocks.0.self_attn.q": (256, 256), "blocks.0.ffn.0": (512, 256),
                               "text_embedding.0": (256, 16)}.items():  # two GGUF weights, one F16 one
        lora[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(4, inp, generator=g) * 0.05
        lora[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(out, 4, generator=g) * 0.05
        lora[f"diffusion_model.{module}.alpha"] = torch.tensor(2.0)
    lora["diffusion_model.blocks.0.ffn.0.diff_b"] = torch.randn(512, generator=g) * 0.05
    lora_path = tmp_path / "lora.safetensors"
    save_file(lora, lora_path)
    patched, report = load_infinitetalk_model(path, dtype=torch.float32, loras=[(lora_path, 0.8)])
    twin_path = _dequantized_twin(path, tmp_path)
    twin, _ = load_infinitetalk_model(twin_path, dtype=torch.float32, loras=[(lora_path, 0.8)])
    out = _run(patched, world["inputs"])
    assert _rel(out, _run(twin, world["inputs"])) < TWIN_RTOL
    assert report.loras[0].applied == 4 and patched.blocks[0].self_attn.q.weight.dtype == torch.uint8
    assert len(patched.blocks[0].self_attn.q.gguf_patches) == 1
    # the host route (ComfyUI): GGUF patches stay on their layers, the host gets only the others
    plain, _ = load_infinitetalk_model(path, dtype=torch.float32)
    assert logical_shapes(plain)["blocks.0.ffn.0.weight"] == (512, 256)
    rest = split_gguf_patches(plain, load_lora(lora_path, logical_shapes(plain)), 0.8)
    assert sorted(p.key for p in rest.patches) == ["blocks.0.ffn.0.bias", "text_embedding.0.weight"]
    merge_lora(plain, rest, 0.8)
    assert _rel(_run(plain, world["inputs"]), out) < TWIN_RTOL
    assert _rel(out, world["reference"]) > 1e-3  # the LoRA did change the output


def test_infinitetalk_audio_gguf_with_either_base(world, tmp_path):
    """Kijai's InfiniteTalk GGUF: the original audio names; mixes with a safetensors or GGUF base."""
    state = world["state"]
    base = {k: v for k, v in state.items() if not is_audio_key(k)}
    audio = {k: v for k, v in state.items() if is_audio_key(k)}
    audio_gguf = write_gguf(tmp_path / "Wan2_1-InfiniteTalk_Single_Q8.gguf", audio,
                            {k: file_type(k, v, "Q8_0") for k, v in audio.items()})
    base_gguf = write_gguf(tmp_path / "wan-base-Q4_K.gguf", base,
                           {k: file_type(k, v, "Q4_K") for k, v in base.items()})
    base_st = tmp_path / "base.safetensors"
    save_file(base, base_st)
    audio_twin = _dequantized_twin(audio_gguf, tmp_path)
    base_twin = _dequantized_twin(base_gguf, tmp_path)
    for gguf_pair, twin_pair in (((base_st, audio_gguf), (base_st, audio_twin)),
                                 ((base_gguf, audio_gguf), (base_twin, audio_twin))):
        model, report = load_infinitetalk_model(*gguf_pair, dtype=torch.float32)
        twin, _ = load_infinitetalk_model(*twin_pair, dtype=torch.float32)
        assert report.audio.kind == "infinitetalk" and report.audio.quantization == "Q8_0"
        assert report.gguf_kept == report.gguf_weights > 0  # the audio layers too stay quantized
        assert model.blocks[0].audio_cross_attn.q_linear.gguf_type == "Q8_0"
        assert _rel(_run(model, world["inputs"]), _run(twin, world["inputs"])) < TWIN_RTOL


def test_header_shapes_metadata_and_raw_bytes(world):
    import gguf

    path = world["gguf"]("Q4_K")
    header = read_header(path)
    e = header.entries
    assert header.container == "gguf" and header.metadata["general.architecture"] == "wan"
    patch = e["patch_embedding.weight"]  # 5-D, written back as F32 by city96's fix_5d_tensors.py
    assert patch.dtype == "F32" and patch.shape == (256, 36, 1, 2, 2)
    assert e["blocks.0.modulation"].dtype == "F32" and e["blocks.0.modulation"].shape == (1, 6, 256)
    assert e["blocks.0.norm3.weight"].dtype == "F32" and e["text_embedding.0.weight"].dtype == "F16"
    q = e["blocks.0.ffn.2.weight"]
    assert q.dtype == "Q4_K" and q.shape == (256, 512) and q.end - q.start == 256 * 512 // 256 * 144
    reader = gguf.GGUFReader(path)
    expected = {t.name: np.array(t.data).reshape(-1).view(np.uint8) for t in reader.tensors}
    del reader
    for name, tensor in iter_tensors(header):
        got = tensor.contiguous().view(torch.uint8).reshape(-1).numpy()
        assert np.array_equal(got, expected[name]), name


def test_original_shape_metadata_is_honoured(world, tmp_path):
    """Tensors stored reshaped (city96's shape fix) come back at ``comfy.gguf.orig_shape.<name>``; a
    block-quantized tensor of a layer that is not a Linear (the Conv3d) is dequantized once at load."""
    state = world["state"]
    stored = {"blocks.0.ffn.0.weight": (2048, 64), "patch_embedding.weight": (1152, 32)}  # [512, 256], 5-D
    types = {k: file_type(k, v, "Q8_0") for k, v in state.items()} | {k: "Q8_0" for k in stored}
    raw = {k: quantize(state[k].reshape(shape).numpy(), "Q8_0") for k, shape in stored.items()}
    arrays = {f"comfy.gguf.orig_shape.{k}": list(state[k].shape) for k in stored}
    path = write_gguf(tmp_path / "reshaped.gguf", state, types, raw=raw, arrays=arrays)
    assert read_header(path).entries["patch_embedding.weight"].shape == (256, 36, 1, 2, 2)
    model, report = load_infinitetalk_model(path, dtype=torch.float32)
    assert report.gguf_weights == report.gguf_kept + 1 and model.patch_embedding.weight.dtype == torch.float32
    twin_path = tmp_path / "reshaped_twin.safetensors"
    values = dequantized_state(path)  # at the stored shapes: back to the model's
    save_file({k: v.reshape(state[k].shape).contiguous() for k, v in values.items()}, twin_path)
    twin, _ = load_infinitetalk_model(twin_path, dtype=torch.float32)
    assert _rel(_run(model, world["inputs"]), _run(twin, world["inputs"])) < TWIN_RTOL


def test_compiled_blocks_trace_the_dequantization_without_graph_breaks(world):
    from torch._dynamo.utils import counters

    from infinitetalk_core.model.compile import compile_blocks

    model, _ = load_infinitetalk_model(world["gguf"]("Q4_K"), dtype=torch.float32)
    eager = _run(model, world["inputs"])
    torch._dynamo.reset()
    counters.clear()
    assert compile_blocks(model, backend="aot_eager") == len(model.blocks)
    compiled = _run(model, world["inputs"])
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
