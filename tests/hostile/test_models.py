"""J. Model files through the loader nodes: pickles are refused for safety (one line, pointing at the
.safetensors file, never suggesting weights_only=False, never executing anything); truncated or malformed
safetensors, files of the wrong kind and missing files -> E_PIPELINE_LOAD with a fix. Extends
tests/loading/test_load_errors.py (core loader) to the node level and to the LoRA / wav2vec files."""
from __future__ import annotations

import json
import pickle
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

import hostile_harness as hh


class _Payload:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickle_file(path, kind: str, marker):
    _Payload.marker = marker
    if kind == "malicious_torch":
        torch.save({"blocks.0.ffn.0.weight": torch.zeros(2), "x": _Payload()}, path)
    elif kind == "malicious_raw":
        path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    elif kind == "plain_raw":
        path.write_bytes(pickle.dumps({"state_dict": {"a": [1, 2, 3]}}))
    elif kind == "plain_torch_state_dict":
        torch.save({"blocks.0.ffn.0.weight": torch.zeros(4, 4)}, path)
    else:
        raise AssertionError(kind)
    return path


def _load_dit(base, audio=hh.AUDIO_FILE, **kw):
    return hh.load_model(base, audio, **kw)


def _assert_refused_pickle(exc, marker):
    text = hh.assert_coded(exc, "E_PIPELINE_LOAD", "safety", "unsafe", "refused")
    assert "safetensors" in text, "the fix should point at the .safetensors file"
    assert "weights_only=False" not in text and "weights_only = False" not in text
    assert not marker.exists(), "the pickle's payload RAN while loading"


PICKLES = ["malicious_torch", "malicious_raw", "plain_raw", "plain_torch_state_dict"]


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin"])
@pytest.mark.parametrize("kind", PICKLES)
def test_pickle_base_model_is_refused(kind, suffix, world, tmp_path):
    name = f"hostile_ckpt_{kind}{suffix}"  # (no "pickle" in the name: the message must say it itself)
    marker = tmp_path / "pwned"
    _pickle_file(world.models / "diffusion_models" / name, kind, marker)
    with pytest.raises(Exception) as info:
        _load_dit(name)
    if kind == "plain_torch_state_dict" and "safety" not in str(info.value):
        # tensors only: read with weights_only=True is safe; then it must fail as a (tiny) wrong layout
        text = hh.assert_coded(info.value, "E_PIPELINE_LOAD", "layout", "not a Wan DiT")
        assert "weights_only=False" not in text and not marker.exists()
        return
    _assert_refused_pickle(info.value, marker)


def test_pickle_infinitetalk_weights_are_refused(world, tmp_path):
    marker = tmp_path / "pwned"
    _pickle_file(world.models / "model_patches" / "hostile_evil_it.ckpt", "malicious_raw", marker)
    with pytest.raises(Exception) as info:
        _load_dit(hh.DIT_FILE, "hostile_evil_it.ckpt")
    _assert_refused_pickle(info.value, marker)


def test_pickle_lora_is_refused(world, tmp_path):
    marker = tmp_path / "pwned"
    _pickle_file(world.models / "loras" / "hostile_evil_lora.pt", "malicious_torch", marker)
    with pytest.raises(Exception) as info:
        hh.load_model(lora_1="hostile_evil_lora.pt", strength_1=1.0)
    _assert_refused_pickle(info.value, marker)


def test_pickle_wav2vec_bin_is_refused(world, tmp_path):
    marker = tmp_path / "pwned"
    folder = world.models / "audio_encoders" / "hostile_evil_w2v"
    shutil.copytree(world.models / "audio_encoders" / hh.WAV2VEC_DIR, folder, dirs_exist_ok=True)
    (folder / "model.safetensors").unlink()
    _pickle_file(folder / "pytorch_model.bin", "malicious_torch", marker)
    with pytest.raises(Exception) as info:
        world.nodes["InfiniteTalkWav2VecLoader"]().load("hostile_evil_w2v", "fp32", "cpu")
    _assert_refused_pickle(info.value, marker)


# ---------------------------------------------------------------- malformed safetensors

def _header_file(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


MALFORMED = {
    "truncated": None,
    "huge_header_length": lambda p: _header_file(p, {"a": 1}, length=2 ** 60),
    "header_not_object": lambda p: _header_file(p, b"[1, 2, 3]"),
    "header_not_utf8": lambda p: _header_file(p, b"\xff\xfe\xfd{}"),
    "unknown_dtype": lambda p: _header_file(p, {"patch_embedding.weight": {"dtype": "F99", "shape": [2],
                                                                             "data_offsets": [0, 8]}}, bytes(8)),
    "offsets_past_end": lambda p: _header_file(p, {"patch_embedding.weight": {"dtype": "F32", "shape": [4],
                                                                                "data_offsets": [0, 16]}}, bytes(4)),
    "shape_disagrees_with_bytes": lambda p: _header_file(p, {"patch_embedding.weight": {
        "dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 8]}}, bytes(8)),
    "negative_shape": lambda p: _header_file(p, {"patch_embedding.weight": {"dtype": "F32", "shape": [-1],
                                                                              "data_offsets": [0, 4]}}, bytes(4)),
    "empty_file": lambda p: p.write_bytes(b""),
}


def _write_malformed(path, how, world):
    if how == "truncated":
        data = (world.models / "diffusion_models" / hh.DIT_FILE).read_bytes()
        path.write_bytes(data[: len(data) - 4000])
    else:
        MALFORMED[how](path)


@pytest.mark.parametrize("how", list(MALFORMED))
def test_malformed_base_safetensors(how, world):
    name = f"hostile_bad_{how}.safetensors"
    _write_malformed(world.models / "diffusion_models" / name, how, world)
    with pytest.raises(Exception) as info:
        _load_dit(name)
    text = hh.assert_coded(info.value, "E_PIPELINE_LOAD", "truncated", "header", "damaged", "corrupt", "too short",
                           "not a safetensors", "invalid", "dtype", "shape", "offset", "JSON", "bytes")
    assert name in text, "the message should name the file"


@pytest.mark.parametrize("role", ["infinitetalk", "lora", "wav2vec"])
def test_truncated_other_files(role, world):
    if role == "infinitetalk":
        src = world.models / "model_patches" / hh.AUDIO_FILE
        dst = world.models / "model_patches" / "hostile_cut_it.safetensors"
        call = lambda: _load_dit(hh.DIT_FILE, dst.name)  # noqa: E731
    elif role == "lora":
        src = world.models / "loras" / "hostile_ok_lora.safetensors"
        save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256),
                   "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(256, 4)}, src)
        dst = world.models / "loras" / "hostile_cut_lora.safetensors"
        call = lambda: hh.load_model(lora_1=dst.name, strength_1=1.0)  # noqa: E731
    else:
        folder = world.models / "audio_encoders" / "hostile_cut_w2v"
        shutil.copytree(world.models / "audio_encoders" / hh.WAV2VEC_DIR, folder, dirs_exist_ok=True)
        src = dst = folder / "model.safetensors"
        call = lambda: world.nodes["InfiniteTalkWav2VecLoader"]().load("hostile_cut_w2v", "fp32", "cpu")  # noqa
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) - 200])
    with pytest.raises(Exception) as info:
        call()
    text = hh.assert_coded(info.value, "E_PIPELINE_LOAD", "truncated", "damaged", "incomplete", "too short")
    assert dst.name in text, "the message should name the file"


def _vae_like():
    return {"encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3), "decoder.head.2.weight": torch.zeros(3, 96, 3, 3, 3),
            "conv1.weight": torch.zeros(32, 32, 1, 1, 1), "conv2.weight": torch.zeros(16, 16, 1, 1, 1),
            "encoder.downsamples.0.residual.0.gamma": torch.ones(96, 1, 1, 1)}


WRONG_KIND = {
    "vae_as_dit": ("diffusion_models", "hostile_vae.safetensors", "base"),
    "lora_as_dit": ("diffusion_models", "hostile_lora_as_dit.safetensors", "base"),
    "dit_as_lora": ("loras", "hostile_dit_as_lora.safetensors", "lora"),
    "infinitetalk_as_wav2vec": ("audio_encoders", "hostile_it_as_w2v.safetensors", "wav2vec"),
    "dit_as_infinitetalk": ("model_patches", "hostile_dit_as_it.safetensors", "audio"),
}


@pytest.mark.parametrize("folder,name,role", list(WRONG_KIND.values()), ids=list(WRONG_KIND))
def test_file_of_the_wrong_kind(folder, name, role, world):
    path = world.models / folder / name
    if name == "hostile_vae.safetensors":
        save_file(_vae_like(), path)
    elif name == "hostile_lora_as_dit.safetensors":
        save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256),
                   "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(256, 4)}, path)
    elif name in ("hostile_dit_as_lora.safetensors", "hostile_dit_as_it.safetensors"):
        shutil.copyfile(world.models / "diffusion_models" / hh.DIT_FILE, path)
    else:
        shutil.copyfile(world.models / "model_patches" / hh.AUDIO_FILE, path)
    with pytest.raises(Exception) as info:
        if role == "base":
            _load_dit(name)
        elif role == "audio":
            _load_dit(hh.DIT_FILE, name)
        elif role == "lora":
            hh.load_model(lora_1=name, strength_1=1.0)
        else:
            world.nodes["InfiniteTalkWav2VecLoader"]().load(name, "fp32", "cpu")
    hh.assert_coded(info.value, "E_PIPELINE_LOAD", "not a", "VAE", "LoRA", "InfiniteTalk", "wav2vec", "DiT",
                    "belongs", "kind")


@pytest.mark.parametrize("role", ["base", "audio", "lora", "wav2vec"])
def test_missing_file_names_the_folder(role, world):
    with pytest.raises(Exception) as info:
        if role == "base":
            _load_dit("hostile_missing.safetensors")
        elif role == "audio":
            _load_dit(hh.DIT_FILE, "hostile_missing.safetensors")
        elif role == "lora":
            hh.load_model(lora_1="hostile_missing.safetensors", strength_1=1.0)
        else:
            world.nodes["InfiniteTalkWav2VecLoader"]().load("hostile_missing", "fp32", "cpu")
    # the contract says E_PIPELINE_LOAD; the loader nodes have used E_INPUT_VALIDATION (tests/nodes): either
    text = hh.assert_coded(info.value, ("E_PIPELINE_LOAD", "E_INPUT_VALIDATION"), "not found", "missing", "no file")
    assert "hostile_missing" in text


@pytest.mark.parametrize("role", ["base", "lora", "wav2vec"])
def test_nul_byte_in_a_model_name(role, world):
    name = "hostile\x00.safetensors"
    with pytest.raises(Exception) as info:
        if role == "base":
            _load_dit(name)
        elif role == "lora":
            hh.load_model(lora_1=name, strength_1=1.0)
        else:
            world.nodes["InfiniteTalkWav2VecLoader"]().load(name, "fp32", "cpu")
    hh.assert_coded(info.value, ("E_INPUT_VALIDATION", "E_PIPELINE_LOAD", "E_DISK"), "NUL", "not found", "name")
