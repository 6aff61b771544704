"""LoRA merge equals W + strength·(alpha/rank)·up·down (or strength·up·down without alpha), per format."""

from __future__ import annotations

import pytest
import torch

from infinitetalk_core.errors import PipelineLoadError
from infinitetalk_core.model.fp8 import is_fp8
from infinitetalk_core.model.loading import load_infinitetalk_model
from infinitetalk_core.model.lora import load_lora, merge_lora, underscore_to_module

RANK = 4
# (file name of module "blocks.0.cross_attn.k_img" in that format, up suffix, down suffix)
FORMATS = {
    "kohya": ("diffusion_model.blocks.0.cross_attn.k_img", ".lora_up.weight", ".lora_down.weight"),
    "kohya_model_prefix": (
        "model.diffusion_model.blocks.0.cross_attn.k_img",
        ".lora_up.weight",
        ".lora_down.weight",
    ),
    "kohya_no_prefix": ("blocks.0.cross_attn.k_img", ".lora_up.weight", ".lora_down.weight"),
    "peft": ("diffusion_model.blocks.0.cross_attn.k_img", ".lora_B.weight", ".lora_A.weight"),
    "peft_base_model": ("base_model.model.blocks.0.cross_attn.k_img", ".lora_B.weight", ".lora_A.weight"),
    "peft_default": ("blocks.0.cross_attn.k_img", ".lora_B.default.weight", ".lora_A.default.weight"),
    "musubi": ("lora_unet_blocks_0_cross_attn_k_img", ".lora_up.weight", ".lora_down.weight"),
}
TARGET = "blocks.0.cross_attn.k_img.weight"


def _pair(seed=0, out=64, inp=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, RANK, generator=g), torch.randn(RANK, inp, generator=g)


def _model(tiny, dtype=torch.float32, **kw):
    model, _ = load_infinitetalk_model(
        tiny.write("full.safetensors", tiny.state), dtype=dtype, head_dim=tiny.head_dim, **kw
    )
    return model


def _shapes(model):
    return {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("alpha", [None, 2.0])
def test_merge_matches_hand_computation(tiny, fmt, alpha):
    module, up_s, down_s = FORMATS[fmt]
    up, down = _pair()
    tensors = {module + up_s: up, module + down_s: down}
    if alpha is not None:
        tensors[module + ".alpha"] = torch.tensor(alpha)
    model = _model(tiny)
    lora = load_lora(tiny.write("lora.safetensors", tensors), _shapes(model))
    assert lora.keys == (TARGET,) and not lora.unmatched
    assert lora.format == fmt.split("_")[0]
    merge_lora(model, lora, strength=0.7)
    scale = 1.0 if alpha is None else alpha / RANK
    expected = tiny.state[TARGET] + 0.7 * scale * (up @ down)
    torch.testing.assert_close(model.state_dict()[TARGET], expected, rtol=1e-6, atol=1e-6)


def test_ignore_alpha_reproduces_the_reference(tiny):
    up, down = _pair()
    model = _model(tiny)
    tensors = {
        "diffusion_model.blocks.1.ffn.0.lora_up.weight": torch.randn(128, RANK),
        "diffusion_model.blocks.1.ffn.0.lora_down.weight": down,
        "diffusion_model.blocks.1.ffn.0.alpha": torch.tensor(1.0),
    }
    lora = load_lora(tiny.write("l.safetensors", tensors), _shapes(model), ignore_alpha=True)
    merge_lora(model, lora, strength=1.5)
    expected = (
        tiny.state["blocks.1.ffn.0.weight"]
        + 1.5 * tensors["diffusion_model.blocks.1.ffn.0.lora_up.weight"] @ down
    )
    torch.testing.assert_close(model.state_dict()["blocks.1.ffn.0.weight"], expected, rtol=1e-6, atol=1e-6)


def test_diff_diff_b_diff_m_and_conv(tiny):
    g = torch.Generator().manual_seed(3)
    d = {
        k: torch.randn(tiny.state[k].shape, generator=g)
        for k in (
            "blocks.0.norm3.weight",
            "blocks.0.norm3.bias",
            "blocks.1.modulation",
            "blocks.0.self_attn.norm_q.weight",
        )
    }
    up, down = torch.randn(64, RANK, generator=g), torch.randn(RANK, 36 * 4, generator=g)
    tensors = {
        "diffusion_model.blocks.0.norm3.diff": d["blocks.0.norm3.weight"],
        "diffusion_model.blocks.0.norm3.diff_b": d["blocks.0.norm3.bias"],
        "diffusion_model.blocks.1.diff_m": d["blocks.1.modulation"],
        "diffusion_model.blocks.0.self_attn.norm_q.diff": d["blocks.0.self_attn.norm_q.weight"],
        "diffusion_model.patch_embedding.lora_up.weight": up,
        "diffusion_model.patch_embedding.lora_down.weight": down,
    }
    model = _model(tiny)
    lora = load_lora(tiny.write("diffs.safetensors", tensors), _shapes(model))
    merge_lora(model, lora, strength=0.5)
    sd = model.state_dict()
    for key, delta in d.items():
        torch.testing.assert_close(sd[key], tiny.state[key] + 0.5 * delta, rtol=1e-6, atol=1e-6)
    conv = tiny.state["patch_embedding.weight"] + 0.5 * (up @ down).reshape(64, 36, 1, 2, 2)
    torch.testing.assert_close(sd["patch_embedding.weight"], conv, rtol=1e-6, atol=1e-6)


def test_merge_into_bf16_and_into_kept_fp8(tiny):
    up, down = _pair()
    tensors = {
        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": up,
        "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": down,
    }
    path = tiny.write("lora.safetensors", tensors)
    bf16 = _model(tiny, torch.bfloat16)
    merge_lora(bf16, load_lora(path, _shapes(bf16)), 1.0)
    expected = (tiny.state[TARGET].bfloat16().float() + up @ down).bfloat16()
    assert torch.equal(bf16.state_dict()[TARGET], expected)

    fp8_file, deq = tiny.fp8_scaled(tiny.base)
    kept, _ = load_infinitetalk_model(
        tiny.write("fp8.safetensors", fp8_file),
        tiny.write("a.safetensors", tiny.audio),
        dtype=torch.bfloat16,
        head_dim=tiny.head_dim,
        fp8_mode="keep",
    )
    assert is_fp8(kept.blocks[0].cross_attn.k_img.weight)
    merge_lora(kept, load_lora(path, _shapes(kept)), 1.0, dtype=torch.bfloat16)
    layer = kept.blocks[0].cross_attn.k_img
    assert layer.weight.dtype == torch.bfloat16 and layer.scale_weight is None
    torch.testing.assert_close(layer.weight, (deq[TARGET] + up @ down).bfloat16(), rtol=0, atol=0)


def test_unmatched_keys_are_reported_and_nothing_matched_is_an_error(tiny):
    up, down = _pair()
    model = _model(tiny)
    tensors = {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.7.self_attn.q.lora_up.weight": up,  # no block 7 in this model
        "diffusion_model.blocks.7.self_attn.q.lora_down.weight": down,
        "text_encoders.t5.foo": torch.zeros(2),
    }
    lora = load_lora(tiny.write("mixed.safetensors", tensors), _shapes(model))
    assert lora.keys == ("blocks.0.self_attn.q.weight",)
    assert set(lora.unmatched) == {k for k in tensors if "blocks.0" not in k}
    only_bad = {k: v for k, v in tensors.items() if "blocks.0" not in k}
    with pytest.raises(PipelineLoadError, match="none of its 3 tensors match a layer of the Wan DiT"):
        load_lora(tiny.write("bad.safetensors", only_bad), _shapes(model))


def test_lora_for_another_model_size(tiny):
    model = _model(tiny)
    up, down = _pair(out=32, inp=32)
    tensors = {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
    }
    with pytest.raises(PipelineLoadError, match="made for a different model"):
        load_lora(tiny.write("small.safetensors", tensors), _shapes(model))


def test_comfy_patches_layout(tiny):
    """The ModelPatcher hand-off reproduces the merge with ComfyUI's LoRA formula."""
    up, down = _pair()
    diff_b = torch.randn(64)
    tensors = {
        "lora_unet_blocks_0_cross_attn_k_img.lora_up.weight": up,
        "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight": down,
        "lora_unet_blocks_0_cross_attn_k_img.alpha": torch.tensor(8.0),
        "lora_unet_blocks_0_cross_attn_k_img.diff_b": diff_b,
    }
    lora = load_lora(tiny.write("musubi.safetensors", tensors), {k: v.shape for k, v in tiny.state.items()})
    made = []
    patches = lora.comfy_patches(lambda keys, weights: made.append(weights) or ("adapter", weights))
    assert set(patches) == {"diffusion_model." + TARGET, "diffusion_model.blocks.0.cross_attn.k_img.bias"}
    mat1, mat2, alpha, mid, dora, reshape = made[0]
    assert torch.equal(mat1, up) and torch.equal(mat2, down) and alpha == 8.0
    assert (mid, dora, reshape) == (None, None, None)
    kind, (bias_delta,) = patches["diffusion_model.blocks.0.cross_attn.k_img.bias"]
    assert kind == "diff" and torch.equal(bias_delta, diff_b)
    legacy = lora.comfy_patches(key_prefix="")
    assert legacy[TARGET][0] == "lora" and legacy[TARGET][1][0] is mat1
    # ComfyUI: weight += strength * (alpha / mat2.shape[0]) * mat1 @ mat2
    comfy = tiny.state[TARGET] + 0.3 * (alpha / mat2.shape[0]) * (mat1 @ mat2)
    model = _model(tiny)
    merge_lora(model, lora, 0.3)
    torch.testing.assert_close(model.state_dict()[TARGET], comfy, rtol=1e-6, atol=1e-6)


def test_underscore_names():
    assert (
        underscore_to_module("blocks_12_audio_cross_attn_kv_linear") == "blocks.12.audio_cross_attn.kv_linear"
    )
    assert underscore_to_module("blocks_0_self_attn_norm_k_img") == "blocks.0.self_attn.norm_k_img"
    assert underscore_to_module("img_emb_proj_1") == "img_emb.proj.1"
    assert underscore_to_module("audio_proj_proj1_vf") == "audio_proj.proj1_vf"


def test_comfy_patches_on_kept_fp8_weights_are_unscaled(tiny):
    """ComfyUI adds patches to the raw fp8 values: dividing by the scale gives the right dequantised sum."""
    from infinitetalk_core.model.fp8 import fp8_weight_scales

    up, down = _pair()
    fp8_file, deq = tiny.fp8_scaled(tiny.base)
    kept, _ = load_infinitetalk_model(
        tiny.write("fp8.safetensors", fp8_file),
        tiny.write("a.safetensors", tiny.audio),
        dtype=torch.float32,
        head_dim=tiny.head_dim,
        fp8_mode="keep",
    )
    lora = load_lora(
        tiny.write(
            "l.safetensors",
            {
                "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": up,
                "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": down,
            },
        ),
        _shapes(kept),
    )
    scales = fp8_weight_scales(kept)
    assert TARGET in scales and len(scales) == sum(tiny.is_linear_weight(k, v) for k, v in tiny.base.items())
    _, (mat1, mat2, *_) = lora.comfy_patches(key_prefix="", weight_scales=scales)[TARGET]
    raw = kept.blocks[0].cross_attn.k_img.weight.float() + 0.5 * (mat1 @ mat2)  # what ComfyUI computes
    torch.testing.assert_close(raw * scales[TARGET], deq[TARGET] + 0.5 * up @ down, rtol=1e-5, atol=1e-5)
