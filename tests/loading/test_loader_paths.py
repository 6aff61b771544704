"""Every loader path on tiny files in the real layouts: the loaded weights equal what the file encodes."""

from __future__ import annotations

import pytest
import torch

from infinitetalk_core.model.fp8 import is_fp8
from infinitetalk_core.model.loading import load_infinitetalk_model


def _load(tiny, base, audio=None, **kw):
    kw.setdefault("dtype", torch.float32)
    return load_infinitetalk_model(base, audio, head_dim=tiny.head_dim, **kw)


def _assert_weights(model, expected: dict, dtype=torch.float32):
    sd = model.state_dict()
    assert set(sd) == set(expected)
    for k, v in expected.items():
        assert sd[k].dtype == dtype, k
        torch.testing.assert_close(sd[k], v.to(dtype), rtol=0, atol=0, msg=k)


def test_single_files_original_keys(tiny):
    model, report = _load(
        tiny, tiny.write("base.safetensors", tiny.base), tiny.write("it.safetensors", tiny.audio)
    )
    _assert_weights(model, tiny.state)
    assert report.loaded_keys == len(tiny.state) and report.audio_keys == len(tiny.audio)
    assert (
        report.config == tiny.config and report.base.kind == "wan_dit" and report.audio.kind == "infinitetalk"
    )


def test_merged_single_file_needs_no_audio_file(tiny):
    model, report = _load(tiny, tiny.write("full.safetensors", tiny.state))
    _assert_weights(model, tiny.state)
    assert report.audio is None and report.config.has_audio


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model."])
def test_comfy_prefixed_base(tiny, prefix):
    base = tiny.write("comfy.safetensors", tiny.base, prefix=prefix)
    model, report = _load(tiny, base, tiny.write("it.safetensors", tiny.audio))
    _assert_weights(model, tiny.state)
    assert report.base.key_prefix == prefix


@pytest.mark.parametrize("via", ["folder", "index"])
def test_original_sharded_folder(tiny, via):
    folder = tiny.write_shards("Wan2.1-I2V-14B-480P", tiny.base)
    base = folder if via == "folder" else folder / "diffusion_pytorch_model.safetensors.index.json"
    model, report = _load(tiny, base, tiny.write("infinitetalk.safetensors", tiny.audio))
    _assert_weights(model, tiny.state)
    assert len(report.files) == 4


@pytest.mark.parametrize("file_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16])
def test_half_precision_files(tiny, file_dtype, target):
    half = {k: v.to(file_dtype) for k, v in tiny.state.items()}
    model, report = _load(
        tiny,
        tiny.write("base.safetensors", {k: half[k] for k in tiny.base}),
        tiny.write("it.safetensors", {k: half[k] for k in tiny.audio}),
        dtype=target,
    )
    _assert_weights(model, half, target)
    assert report.dtypes_seen == ({torch.float16: "F16", torch.bfloat16: "BF16"}[file_dtype],)


def test_kijai_mixed_dtype_audio_repack(tiny):
    """Kijai's fp16 repack: block Linear weights F16, everything else F32, in one file."""
    mixed = {
        k: (v.half() if tiny.is_linear_weight(k, v) and k.startswith("blocks.") else v)
        for k, v in tiny.audio.items()
    }
    model, report = _load(
        tiny,
        tiny.write("base.safetensors", tiny.base),
        tiny.write("Wan2_1-InfiniTetalk-Single_fp16.safetensors", mixed),
    )
    _assert_weights(model, {**tiny.base, **{k: v.float() for k, v in mixed.items()}})
    assert report.dtypes_seen == ("F16", "F32")


@pytest.mark.parametrize("spelling", [("scale_weight", ()), ("weight_scale", (1,))])
def test_fp8_scaled_dequantize(tiny, spelling):
    """ComfyUI scaled_fp8 (0-d scale_weight + scale_input + marker); weight_scale/input_scale spelling."""
    name, shape = spelling
    file_tensors, expected = tiny.fp8_scaled(tiny.base, name, shape)
    base = tiny.write("wan_fp8_scaled.safetensors", file_tensors)
    model, report = _load(tiny, base, tiny.write("it.safetensors", tiny.audio), dtype=torch.bfloat16)
    _assert_weights(model, {**expected, **tiny.audio}, torch.bfloat16)
    n_linear = sum(tiny.is_linear_weight(k, v) for k, v in tiny.base.items())
    assert report.fp8_weights == n_linear and report.fp8_kept == 0 and report.base.fp8_scaled
    assert len(report.ignored_keys) == n_linear + 1  # input scales + the marker


def test_kijai_fp8_audio_without_marker(tiny):
    """Kijai _scaled_KJ: F8 block Linears with scale_weight only, the rest F32."""
    blocks = {k: v for k, v in tiny.audio.items() if k.startswith("blocks.")}
    file_tensors, expected = tiny.fp8_scaled(blocks, extras=False)
    file_tensors.update({k: v for k, v in tiny.audio.items() if k not in blocks})
    expected.update({k: v for k, v in tiny.audio.items() if k not in blocks})
    audio = tiny.write("Wan2_1-InfiniteTalk-Single_fp8_e4m3fn_scaled_KJ.safetensors", file_tensors)
    model, _ = _load(tiny, tiny.write("base.safetensors", tiny.base), audio)
    _assert_weights(model, {**tiny.base, **expected})


def test_fp8_keep_matches_dequantize(tiny, tiny_inputs):
    file_tensors, _ = tiny.fp8_scaled(tiny.base)
    base, audio = tiny.write("fp8.safetensors", file_tensors), tiny.write("it.safetensors", tiny.audio)
    kept, report = _load(tiny, base, audio, fp8_mode="keep")
    deq, _ = _load(tiny, base, audio, fp8_mode="dequantize")
    q = kept.blocks[0].self_attn.q
    assert is_fp8(q.weight) and q.scale_weight is not None and report.fp8_kept == report.fp8_weights > 0
    assert set(kept.state_dict()) == set(deq.state_dict())  # the scale is not a state-dict key
    with torch.no_grad():
        torch.testing.assert_close(kept(**tiny_inputs), deq(**tiny_inputs), rtol=0, atol=0)


def test_comfy_quant_blob_with_u8_storage(tiny):
    """Newer ComfyUI files: <m>.comfy_quant JSON + weight_scale; fp8 bytes may be stored as U8."""
    import json

    file_tensors, expected = tiny.fp8_scaled(tiny.base, "weight_scale", extras=False)
    blob = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    for key in [k for k in file_tensors if k.endswith(".weight") and is_fp8(file_tensors[k])]:
        file_tensors[key] = file_tensors[key].view(torch.uint8)
        file_tensors[key[: -len(".weight")] + ".comfy_quant"] = blob.clone()
    model, _ = _load(
        tiny, tiny.write("quant.safetensors", file_tensors), tiny.write("it.safetensors", tiny.audio)
    )
    _assert_weights(model, {**expected, **tiny.audio})


def test_pth_through_weights_only(tiny):
    path = tiny.root / "base.pth"
    torch.save({"state_dict": tiny.base}, path)
    model, report = _load(tiny, path, tiny.write("it.safetensors", tiny.audio))
    _assert_weights(model, tiny.state)
    assert report.files[0] == path


def test_loras_are_merged_by_the_loader(tiny):
    g = torch.Generator().manual_seed(5)
    up, down = torch.randn(64, 4, generator=g), torch.randn(4, 64, generator=g)
    lora = tiny.write(
        "lora.safetensors",
        {
            "diffusion_model.blocks.1.cross_attn.o.lora_up.weight": up,
            "diffusion_model.blocks.1.cross_attn.o.lora_down.weight": down,
            "diffusion_model.blocks.1.cross_attn.o.alpha": torch.tensor(2.0),
        },
    )
    model, report = _load(tiny, tiny.write("full.safetensors", tiny.state), loras=[(lora, 0.5)])
    expected = dict(tiny.state)
    key = "blocks.1.cross_attn.o.weight"
    expected[key] = tiny.state[key] + 0.5 * (2.0 / 4) * up @ down
    sd = model.state_dict()
    torch.testing.assert_close(sd[key], expected[key], rtol=1e-6, atol=1e-6)
    assert report.loras[0].applied == 1 and report.loras[0].format == "kohya"


def test_load_to_meta_free_model_on_device_dtype(tiny):
    model, report = _load(tiny, tiny.write("full.safetensors", tiny.state), dtype=torch.bfloat16)
    assert all(not p.is_meta and p.dtype == torch.bfloat16 for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert "bfloat16" in report.summary()


def test_audio_file_replaces_the_audio_part_of_a_merged_base(tiny):
    other = {k: v + 1.0 for k, v in tiny.audio.items()}
    model, report = _load(
        tiny, tiny.write("full.safetensors", tiny.state), tiny.write("multi.safetensors", other)
    )
    _assert_weights(model, {**tiny.base, **other})
    assert report.loaded_keys == len(tiny.state)
