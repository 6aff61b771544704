"""identify_file on tiny files of every kind, in their real key layouts."""

from __future__ import annotations

import torch

from infinitetalk_core.model.identify import identify_file


def _z(*shape):
    return torch.zeros(shape)


def test_wan_dit_variants(tiny):
    ident = identify_file(
        tiny.write(
            "wan.safetensors",
            {k: v.bfloat16() for k, v in tiny.base.items()},
            prefix="model.diffusion_model.",
        )
    )
    assert (ident.kind, ident.variant, ident.size, ident.dtypes) == ("wan_dit", "i2v", "dim 64", ("BF16",))
    assert ident.key_prefix == "model.diffusion_model." and ident.comfy_folder == "diffusion_models"
    assert ident.tensor_count == len(tiny.base) and not ident.details["audio_weights"]
    assert ident.details == {
        "dim": 64,
        "in_dim": 36,
        "num_layers": 2,
        "clip_image_embedding": True,
        "audio_weights": False,
    }
    t2v = {k: v for k, v in tiny.base.items() if not k.startswith("img_emb.")}
    t2v["patch_embedding.weight"] = _z(64, 16, 1, 2, 2)
    assert identify_file(tiny.write("t2v.safetensors", t2v)).variant == "t2v"
    full = identify_file(tiny.write("full.safetensors", tiny.state))
    assert full.kind == "wan_dit" and full.details["audio_weights"]


def test_fp8_scaled_and_sharded(tiny):
    fp8, _ = tiny.fp8_scaled(tiny.base)
    ident = identify_file(tiny.write("wan_fp8_scaled.safetensors", fp8))
    assert (
        ident.fp8_scaled
        and ident.dtypes == ("F16", "F32", "F8_E4M3")
        and ident.describe().startswith("a Wan DiT")
    )
    plain = identify_file(
        tiny.write("wan_fp8.safetensors", {k: v.to(torch.float8_e4m3fn) for k, v in tiny.base.items()})
    )
    assert not plain.fp8_scaled and "without scales" in plain.notes[0]
    folder = tiny.write_shards("Wan2.1-I2V-14B-480P", tiny.base)
    sharded = identify_file(folder)
    assert sharded.kind == "wan_dit" and sharded.tensor_count == len(tiny.base) and sharded.path == folder


def test_audio_weights_names_are_only_a_hint(tiny):
    single = identify_file(tiny.write("Wan2_1-InfiniTetalk-Single_fp16.safetensors", tiny.audio))
    assert (single.kind, single.variant, single.comfy_folder) == ("infinitetalk", "single", "model_patches")
    assert "file name only" in single.notes[0] and single.details == {"dim": 64, "num_layers": 2}
    assert (
        identify_file(tiny.write("wan2.1_infiniteTalk_multi_fp16.safetensors", tiny.audio)).variant == "multi"
    )
    multitalk = identify_file(tiny.write("multitalk.safetensors", tiny.audio))
    assert (multitalk.kind, multitalk.variant) == ("multitalk", None)
    anonymous = identify_file(tiny.write("weights.safetensors", tiny.audio))
    assert (anonymous.kind, anonymous.variant) == ("infinitetalk", None)


def test_wav2vec2_vae_t5_clip(tiny):
    w2v = {
        "wav2vec2.feature_extractor.conv_layers.0.conv.weight": _z(16, 1, 10),
        "wav2vec2.encoder.layer_norm.weight": _z(32),
        **{f"wav2vec2.encoder.layers.{i}.attention.k_proj.weight": _z(32, 32) for i in range(2)},
        "quantizer.codevectors": _z(1, 8, 4),
    }
    ident = identify_file(tiny.write("chinese-wav2vec2-base.safetensors", w2v))
    assert (ident.kind, ident.variant, ident.comfy_folder) == ("wav2vec2", "2 layers x 32", "audio_encoders")

    vae = {
        "encoder.conv1.weight": _z(96, 3, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": _z(96, 1, 1, 1),
        "conv1.weight": _z(32, 32, 1, 1, 1),
        "conv2.weight": _z(16, 16, 1, 1, 1),
        "decoder.head.2.weight": _z(3, 96, 3, 3, 3),
    }
    torch.save(vae, tiny.root / "Wan2.1_VAE.pth")
    ident = identify_file(tiny.root / "Wan2.1_VAE.pth")
    assert (ident.kind, ident.variant, ident.comfy_folder, ident.dtypes) == ("vae", "wan2.1", "vae", ("F32",))

    t5 = {"shared.weight": _z(256384, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": _z(4, 4)}
    ident = identify_file(tiny.write("umt5_xxl.safetensors", {k: v.half() for k, v in t5.items()}))
    assert (ident.kind, ident.variant, ident.comfy_folder) == ("t5", "umt5", "text_encoders")
    wan_t5 = {"token_embedding.weight": _z(100, 4), "blocks.0.attn.q.weight": _z(4, 4)}
    assert identify_file(tiny.write("models_t5.safetensors", wan_t5)).kind == "t5"

    clip = {"vision_model.encoder.layers.0.self_attn.q_proj.weight": _z(8, 8)}
    ident = identify_file(tiny.write("clip_vision_h.safetensors", clip))
    assert (ident.kind, ident.comfy_folder) == ("clip_vision", "clip_vision")


def test_lora_formats_and_unknown(tiny):
    pairs = {
        "kohya": "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
        "peft": "base_model.model.blocks.0.self_attn.q.lora_A.weight",
        "musubi": "lora_unet_blocks_0_self_attn_q.lora_down.weight",
        "diff": "diffusion_model.blocks.0.norm3.diff",
    }
    for fmt, key in pairs.items():
        ident = identify_file(tiny.write(f"{fmt}.safetensors", {key: _z(4, 64)}))
        assert (ident.kind, ident.variant, ident.comfy_folder) == ("lora", fmt, "loras"), fmt
    unknown = identify_file(tiny.write("x.safetensors", {"foo": _z(1)}))
    assert (unknown.kind, unknown.comfy_folder) == ("unknown", None)
