"""Every bad input gives a PipelineLoadError (E_PIPELINE_LOAD) that says what is wrong and what to do."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from infinitetalk_core.errors import InputValidationError, PipelineLoadError
from infinitetalk_core.model.identify import FileIdentity
from infinitetalk_core.model.load_checks import check_audio_file
from infinitetalk_core.model.loading import load_infinitetalk_model


def _fails(*args, match: str, **kw) -> PipelineLoadError:
    kw.setdefault("head_dim", 32)
    with pytest.raises(PipelineLoadError, match=match) as info:
        load_infinitetalk_model(*args, dtype=torch.float32, **kw)
    err = info.value
    assert err.code == "E_PIPELINE_LOAD" and err.fix and str(err).startswith("E_PIPELINE_LOAD: ")
    return err


def _vae_tensors():
    return {
        "encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": torch.ones(96, 1, 1, 1),
        "conv1.weight": torch.zeros(32, 32, 1, 1, 1),
        "conv2.weight": torch.zeros(16, 16, 1, 1, 1),
        "decoder.head.2.weight": torch.zeros(3, 96, 3, 3, 3),
    }


def test_vae_as_base(tiny):
    err = _fails(
        tiny.write("wan_2.1_vae.safetensors", _vae_tensors()),
        tiny.write("it.safetensors", tiny.audio),
        match="this file is a VAE, not a Wan DiT",
    )
    assert "VAE loader" in err.fix


def test_t2v_base(tiny):
    t2v = {k: v for k, v in tiny.base.items() if not k.startswith("img_emb.") and "_img" not in k}
    t2v["patch_embedding.weight"] = torch.zeros(64, 16, 1, 2, 2)
    _fails(
        tiny.write("t2v.safetensors", t2v),
        tiny.write("it.safetensors", tiny.audio),
        match=r"this is a T2V model \(in_dim 16\); InfiniteTalk needs the I2V 14B model \(in_dim 36\)",
    )


def test_i2v_without_clip_embedding(tiny):
    no_clip = {k: v for k, v in tiny.base.items() if not k.startswith("img_emb.")}
    _fails(
        tiny.write("wan22_i2v.safetensors", no_clip),
        tiny.write("it.safetensors", tiny.audio),
        match="no CLIP image embedding",
    )


def test_audio_dim_differs_from_base(tiny):
    """Audio weights for another width: the message names both dims and the base model's size."""
    wide = {k: torch.zeros([s * 2 if s == 64 else s for s in v.shape]) for k, v in tiny.audio.items()}
    _fails(
        tiny.write("base.safetensors", tiny.base),
        tiny.write("it.safetensors", wide),
        match="InfiniteTalk weights are for dim 128 but the base model has dim 64",
    )


def test_dim_message_names_wan_13b():
    base = FileIdentity(
        path=__import__("pathlib").Path("wan1.3b.safetensors"),
        kind="wan_dit",
        variant="i2v",
        details={"dim": 1536, "num_layers": 30},
    )
    audio = FileIdentity(
        path=base.path.with_name("it.safetensors"),
        kind="infinitetalk",
        details={"dim": 5120, "num_layers": 40},
    )
    with pytest.raises(PipelineLoadError, match=r"for dim 5120 but the base model has dim 1536 \(Wan 1.3B\)"):
        check_audio_file(audio, base)


def test_audio_layer_count_differs(tiny):
    fewer = {k: v for k, v in tiny.audio.items() if not k.startswith("blocks.1.")}
    _fails(
        tiny.write("base.safetensors", tiny.base),
        tiny.write("it.safetensors", fewer),
        match="InfiniteTalk weights have 1 blocks but the base model has 2",
    )


def test_audio_file_given_as_base(tiny):
    err = _fails(
        tiny.write("infinitetalk.safetensors", tiny.audio), match="holds only InfiniteTalk/MultiTalk audio"
    )
    assert "audio weights" in err.fix


def test_other_model_kinds_as_base_name_their_folder(tiny):
    lora = {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 4),
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 64),
    }
    _fails(
        tiny.write("lora.safetensors", lora),
        match=r"this file is a LoRA \(kohya, F32\), not a Wan DiT \(it "
        r"belongs in ComfyUI/models/loras\)",
    )


def test_base_given_as_audio(tiny):
    base = tiny.write("base.safetensors", tiny.base)
    _fails(
        base,
        tiny.write("base_again.safetensors", tiny.base),
        match="Wan DiT .* given as the InfiniteTalk audio",
    )


def test_swapped_files(tiny):
    _fails(
        tiny.write("it.safetensors", tiny.audio),
        tiny.write("base.safetensors", tiny.base),
        match="the two files are swapped",
    )


def test_full_model_given_as_audio(tiny):
    _fails(
        tiny.write("base.safetensors", tiny.base),
        tiny.write("full.safetensors", tiny.state),
        match="complete InfiniteTalk model",
    )


def test_no_audio_weights_at_all(tiny):
    _fails(tiny.write("base.safetensors", tiny.base), match="without InfiniteTalk audio weights")


def test_missing_shard(tiny):
    folder = tiny.write_shards("wan", tiny.base)
    (folder / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    err = _fails(folder, tiny.write("it.safetensors", tiny.audio), match="1 of the 3 shards .* missing")
    assert "00002-of-00003" in str(err) and "shard" in err.fix


def test_truncated_data(tiny):
    path = tiny.write("base.safetensors", tiny.base)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    _fails(
        path,
        tiny.write("it.safetensors", tiny.audio),
        match="the file is truncated: tensor .* needs bytes up to",
    )


def test_header_larger_than_file(tiny):
    path = tiny.root / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", 5000) + b'{"a": 1')
    _fails(path, match="header says it is 5000 bytes but the file is only 15 bytes")


def test_corrupt_header_json(tiny):
    path = tiny.root / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 8) + b"not json")
    _fails(path, match="not valid JSON")


def test_empty_and_not_safetensors(tiny):
    (tiny.root / "empty.safetensors").write_bytes(b"")
    _fails(tiny.root / "empty.safetensors", match="too short")
    (tiny.root / "text.safetensors").write_bytes(b"hello world, definitely not a model file")
    _fails(tiny.root / "text.safetensors", match="not a safetensors file")


def test_unknown_format_and_missing_path(tiny):
    (tiny.root / "model.onnx").write_bytes(b"ONNX")  # .gguf is a known format now (tests/loading/test_gguf*.py)
    _fails(tiny.root / "model.onnx", match="unknown checkpoint format '.onnx'")
    _fails(tiny.root / "nowhere.safetensors", match="no file or folder at")


def test_unknown_layout(tiny):
    _fails(
        tiny.write("weird.safetensors", {"foo.bar": torch.zeros(3)}),
        match="unknown format: its 1 tensors match no model layout",
    )


def test_missing_and_unexpected_keys_are_summarised(tiny):
    broken = dict(tiny.base)
    del broken["blocks.1.ffn.2.bias"]
    broken["blocks.0.vace_extra.weight"] = torch.zeros(2)
    err = _fails(
        tiny.write("broken.safetensors", broken),
        tiny.write("it.safetensors", tiny.audio),
        match="1 missing: blocks.1.ffn.2.bias; "
        "1 unexpected: blocks.0.vace_extra.weight in broken.safetensors",
    )
    assert "download it again" in err.fix


def test_wrong_shape_is_reported(tiny):
    broken = dict(tiny.base)
    broken["blocks.0.norm3.bias"] = torch.zeros(65)
    _fails(
        tiny.write("broken.safetensors", broken),
        tiny.write("it.safetensors", tiny.audio),
        match=r"blocks.0.norm3.bias is \[65\] in broken.safetensors, the model needs \[64\]",
    )


def test_unsupported_quant_format(tiny):
    tensors = dict(tiny.base)
    tensors["blocks.0.ffn.0.comfy_quant"] = torch.tensor(
        list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8
    )
    _fails(
        tiny.write("nvfp4.safetensors", tensors),
        tiny.write("it.safetensors", tiny.audio),
        match="quantised as 'nvfp4'",
    )


def test_malicious_pickle_is_refused(tiny):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tiny.root / "evil.pth"
    torch.save({"x": Boom()}, path)
    err = _fails(path, match=r"refused for safety.* Fix: Use the \.safetensors version")
    assert "\n" not in str(err) and "weights_only=False" not in str(err)  # one line, no unsafe advice


def test_legacy_non_zip_pickle_loads_and_a_truncated_one_is_named(tiny):
    from infinitetalk_core.model.checkpoint import torch_load_safely

    path = tiny.root / "legacy.bin"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert torch_load_safely(path)["w"].eq(1).all()
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(PipelineLoadError, match="legacy.bin .*cannot be read.* Fix: .*download it again"):
        torch_load_safely(path)


def test_bad_fp8_mode(tiny):
    with pytest.raises(InputValidationError, match="fp8_mode"):
        load_infinitetalk_model(tiny.write("full.safetensors", tiny.state), fp8_mode="fast")
