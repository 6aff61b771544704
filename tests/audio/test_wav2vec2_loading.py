"""Every wav2vec2 loader path with tiny files in the real layouts; key mapping against the real manifest."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from infinitetalk_core.audio import (
    bundled_config,
    encode_audio_features,
    load_wav2vec2,
    wav2vec2_from_state_dict,
)
from infinitetalk_core.audio.wav2vec2_loading import (
    build_wav2vec2,
    detect_config,
    load_state_dict_strict,
    normalize_state_dict,
)
from infinitetalk_core.errors import PipelineLoadError

EMB_TOL = {"atol": 1e-3, "rtol": 1e-4}


def _kijai_layout(state):
    """kijai's wav2vec2-chinese-base_fp16.safetensors: the Tencent checkpoint's names, fp16."""
    return {k: v.half() for k, v in state.items()}


def _comfy_layout(state):
    """What ComfyUI's own wav2vec2 module saves: no prefix, parametrization names, no pretraining heads."""
    renames = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    out = {}
    for key, value in state.items():
        if not key.startswith("wav2vec2."):
            continue
        key = key[len("wav2vec2."):]
        head, dot, tail = key.rpartition(".")
        out[head + dot + renames.get(tail, tail)] = value
    return out


@pytest.fixture(scope="module")
def tiny_state(tiny_folder):
    return load_file(str(tiny_folder / "model.safetensors"))


def test_hf_folder_safetensors_matches_golden(tiny_encoder, audio_golden):
    assert tiny_encoder.num_layers == 2 and tiny_encoder.hidden_size == 32 and not tiny_encoder.do_normalize
    emb = encode_audio_features(tiny_encoder, audio_golden["wave_16k_loudnorm"].numpy())
    torch.testing.assert_close(emb, audio_golden["emb"], **EMB_TOL)


def test_hf_folder_pytorch_bin(tmp_path, tiny_folder, tiny_state, audio_golden):
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(tiny_folder / name, tmp_path / name)
    torch.save(tiny_state, tmp_path / "pytorch_model.bin")
    encoder = load_wav2vec2(tmp_path)
    emb = encode_audio_features(encoder, audio_golden["wave_16k_loudnorm"].numpy())
    torch.testing.assert_close(emb, audio_golden["emb"], **EMB_TOL)


@pytest.mark.parametrize("layout", ["kijai", "comfy"])
def test_single_file_layouts(tmp_path, tiny_folder, tiny_state, audio_golden, layout):
    state = _kijai_layout(tiny_state) if layout == "kijai" else _comfy_layout(tiny_state)
    path = tmp_path / "models" / "audio_encoders" / f"tiny_{layout}.safetensors"
    path.parent.mkdir(parents=True)
    save_file(state, str(path), metadata={"format": "pt"})
    encoder = load_wav2vec2(path, config=tiny_folder / "config.json")
    assert encoder.dtype == torch.float32
    wave = audio_golden["wave_16k_loudnorm"].numpy()
    emb = encode_audio_features(encoder, wave)
    if layout == "comfy":
        torch.testing.assert_close(emb, audio_golden["emb"], **EMB_TOL)
    else:  # fp16 weights: exactly the fp32 model whose weights went through fp16 rounding
        rounded = tmp_path / "rounded.safetensors"
        save_file({k: v.half().float() for k, v in tiny_state.items()}, str(rounded))
        expected = encode_audio_features(load_wav2vec2(rounded, config=tiny_folder / "config.json"), wave)
        torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
        assert (emb - audio_golden["emb"]).abs().max() < 0.1


def test_single_file_next_to_its_config_uses_it(tmp_path, tiny_folder, audio_golden):
    shutil.copy(tiny_folder / "config.json", tmp_path / "config.json")
    shutil.copy(tiny_folder / "model.safetensors", tmp_path / "wav2vec2.safetensors")
    emb = encode_audio_features(load_wav2vec2(tmp_path / "wav2vec2.safetensors"),
                                audio_golden["wave_16k_loudnorm"].numpy())
    torch.testing.assert_close(emb, audio_golden["emb"], **EMB_TOL)


def test_single_file_of_other_width_needs_its_config(tmp_path, tiny_folder):
    shutil.copy(tiny_folder / "model.safetensors", tmp_path / "tiny.safetensors")
    with pytest.raises(PipelineLoadError, match="32 wide.*not chinese-wav2vec2-base"):
        load_wav2vec2(tmp_path / "tiny.safetensors")


def test_real_checkpoint_names_map_onto_the_real_architecture(manifests_dir):
    """kijai's / Tencent's 218 tensor names and shapes → bundled config → strict load (meta tensors)."""
    manifest = json.loads((manifests_dir / "chinese_wav2vec2_base_pytorch_model.json").read_text())
    state = normalize_state_dict({k: torch.empty(s, device="meta") for k, s in manifest["tensors"].items()})
    config = detect_config({k: tuple(v.shape) for k, v in state.items()})
    bundled = bundled_config()[0]
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "conv_dim", "conv_kernel",
                "conv_bias", "feat_extract_norm", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups"):
        assert config[key] == bundled[key], key
    model = build_wav2vec2(config)
    load_state_dict_strict(model, state, "manifest")
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] - sum(
        torch.Size(s).numel() for k, s in manifest["tensors"].items() if not k.startswith("wav2vec2."))


def test_bundled_config_is_the_manifest(manifests_dir):
    manifest = json.loads((manifests_dir / "chinese_wav2vec2_base_config.json").read_text())
    assert bundled_config() == (manifest["config"], manifest["preprocessor_config"])


def test_mismatched_and_missing_files(tmp_path, tiny_folder, tiny_state):
    broken = dict(tiny_state)
    broken.pop("wav2vec2.encoder.layers.1.attention.q_proj.weight")
    broken["wav2vec2.encoder.extra.weight"] = torch.zeros(3)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(PipelineLoadError, match="1 missing.*q_proj.*1 unexpected.*extra"):
        load_wav2vec2(tmp_path / "broken.safetensors", config=tiny_folder / "config.json")
    with pytest.raises(PipelineLoadError, match="not found"):
        load_wav2vec2(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(PipelineLoadError, match="cannot read"):
        load_wav2vec2(tmp_path / "junk.safetensors")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(PipelineLoadError, match="no model.safetensors or pytorch_model.bin"):
        load_wav2vec2(tmp_path / "empty_folder")
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(tmp_path / "dit.safetensors"))
    with pytest.raises(PipelineLoadError, match="not a wav2vec2 checkpoint"):
        load_wav2vec2(tmp_path / "dit.safetensors")


def test_large_pre_ln_models_are_rejected():
    config = dict(bundled_config()[0], do_stable_layer_norm=True)
    with pytest.raises(PipelineLoadError, match="chinese-wav2vec2-base"):
        build_wav2vec2(config)


def test_from_a_hosts_state_dict(tiny_folder, tiny_state, audio_golden):
    """What a ComfyUI AUDIO_ENCODER holds (its module's state dict) builds the same encoder."""
    config = json.loads((tiny_folder / "config.json").read_text())
    encoder = wav2vec2_from_state_dict(_comfy_layout(tiny_state), config)
    emb = encode_audio_features(encoder, audio_golden["wave_16k_loudnorm"].numpy())
    torch.testing.assert_close(emb, audio_golden["emb"], **EMB_TOL)
