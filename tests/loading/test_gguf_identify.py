"""GGUF files are identified (kind, quantization, tensor count), listed by the loader node, and the ones
the loader cannot use are refused with the reason: another architecture, unsupported types, damage."""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
import torch

from infinitetalk_core.doctor import examine, report
from infinitetalk_core.errors import PipelineLoadError
from infinitetalk_core.model.checkpoint import FileHeader, TensorEntry, read_header
from infinitetalk_core.model.config import detect_dit_config
from infinitetalk_core.model.dit import InfiniteTalkDiT
from infinitetalk_core.model.gguf_quants import BLOCK_SIZES
from infinitetalk_core.model.identify import identify_file, identify_headers
from infinitetalk_core.model.layouts import is_audio_key
from infinitetalk_core.model.load_checks import check_keys
from infinitetalk_core.model.loading import load_infinitetalk_model
from tests.loading.gguf_fixtures import file_type, random_blocks, tiny_state, write_gguf

Q4_K_M = 15  # llama.cpp LlamaFileType.MOSTLY_Q4_K_M


def _q4_k_m_type(key: str, shape) -> str | None:
    """city96's Q4_K_M choice for a full-size tensor (None = left in F16/F32): attention v and ffn.2 in
    Q6_K, other 2-D block weights Q4_K (tools/lcpp.patch ``img_tensor_get_type``)."""
    keep = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.",
            "img_emb.", "head.")
    if len(shape) != 2 or any(k in key for k in keep) or shape[1] % 256:
        return None
    upgraded = (".self_attn.v.weight", ".cross_attn.v.weight", ".ffn.2.weight")
    return "Q6_K" if key.endswith(upgraded) else "Q4_K"


@pytest.fixture(scope="module")
def state():
    return tiny_state()


def _mixed_types(state: dict) -> dict:
    """A tiny Q4_K_M-like file: Q6_K where city96 puts it, Q4_K elsewhere."""
    types = {k: file_type(k, v, "Q4_K") for k, v in state.items()}
    return {k: (_q4_k_m_type(k, state[k].shape) if t == "Q4_K" else t) for k, t in types.items()}


def test_identify_reports_kind_quantization_and_count(state, tmp_path):
    base = {k: v for k, v in state.items() if not is_audio_key(k)}
    path = write_gguf(tmp_path / "wan2.1-i2v-tiny-Q4_K_M.gguf", base, _mixed_types(base), file_type_id=Q4_K_M)
    ident = identify_file(path)
    assert (ident.kind, ident.variant, ident.container) == ("wan_dit", "i2v", "gguf")
    assert ident.quantization == "Q4_K"  # the type with the most elements (Q6_K holds fewer)
    assert ident.tensor_count == len(base) and ident.comfy_folder == "diffusion_models"
    assert ident.details["gguf_arch"] == "wan" and ident.details["gguf_file_type"] == "Q4_K_M"
    assert "Q6_K x" in ident.details["tensor_types"] and "F32 x" in ident.details["tensor_types"]
    assert ident.describe() == "a Wan DiT (i2v, dim 256, GGUF Q4_K)" and not ident.notes
    audio = {k: v for k, v in state.items() if is_audio_key(k)}
    apath = write_gguf(tmp_path / "Wan2_1-InfiniteTalk_Single_Q8.gguf", audio,
                       {k: file_type(k, v, "Q8_0") for k, v in audio.items()})
    aident = identify_file(apath)
    assert (aident.kind, aident.variant, aident.quantization) == ("infinitetalk", "single", "Q8_0")
    assert aident.comfy_folder == "model_patches"


def test_doctor_lists_gguf_files(state, tmp_path):
    models = tmp_path / "models"
    (models / "unet").mkdir(parents=True)
    (models / "model_patches").mkdir()
    base = {k: v for k, v in state.items() if not is_audio_key(k)}
    write_gguf(models / "unet" / "wan-tiny-Q4_K_M.gguf", base, _mixed_types(base), file_type_id=Q4_K_M)
    audio = {k: v for k, v in state.items() if is_audio_key(k)}
    write_gguf(models / "model_patches" / "Wan2_1-InfiniteTalk_Single_Q8.gguf", audio,
               {k: file_type(k, v, "Q8_0") for k, v in audio.items()})
    lines, _ = report(models, examine(models))
    text = "\n".join(lines)
    assert f"unet/wan-tiny-Q4_K_M.gguf: a Wan DiT (i2v, dim 256, GGUF Q4_K), {len(base)} tensors, " \
           "file type Q4_K_M  [ok]" in text  # models/unet is ComfyUI's second diffusion_models folder
    assert "Single_Q8.gguf: InfiniteTalk audio weights (single, dim 256, GGUF Q8_0)" in text
    assert "found    InfiniteTalk audio weights (single)" in text


def _iq4_file(state, tmp_path):
    """A Wan GGUF with one IQ4_NL tensor (a type the loader does not dequantize)."""
    types = {k: file_type(k, v, "Q8_0") for k, v in state.items()}
    key = "blocks.0.ffn.2.weight"  # [256, 512] -> 4096 IQ4_NL blocks of 32
    types[key] = "IQ4_NL"
    raw = {key: random_blocks("Q4_0", 256 * 512 // 32).reshape(256, -1)}  # same 18-byte block size
    return write_gguf(tmp_path / "wan-iq4.gguf", state, types, raw=raw)


def test_unsupported_types_are_named(state, tmp_path):
    path = _iq4_file(state, tmp_path)
    ident = identify_file(path)
    assert ident.details["gguf_unsupported_types"] == "IQ4_NL"
    assert "IQ4_NL are not supported" in ident.notes[0]
    with pytest.raises(PipelineLoadError, match=r"quantization type this loader does not read: IQ4_NL "
                                                r"\(1 tensor, e\.g\. blocks\.0\.ffn\.2\.weight"):
        load_infinitetalk_model(path, dtype=torch.float32)
    lines, _ = report(tmp_path, examine(tmp_path))
    assert any("note: GGUF tensor types IQ4_NL" in line for line in lines)
    assert any("MISSING  Wan2.1 I2V-14B DiT" in line for line in lines)  # not counted as usable


def test_other_architectures_are_refused(tmp_path):
    flux = {"double_blocks.0.img_attn.proj.weight": torch.randn(64, 64),
            "img_in.weight": torch.randn(64, 64), "img_in.bias": torch.randn(64)}
    path = write_gguf(tmp_path / "flux1-dev-Q4_0.gguf", flux, {"double_blocks.0.img_attn.proj.weight": "Q4_0",
                                                              "img_in.weight": "F16", "img_in.bias": "F32"},
                      arch="flux")
    with pytest.raises(PipelineLoadError, match="a GGUF of the 'flux' architecture, not a Wan DiT") as exc:
        load_infinitetalk_model(path)
    assert "city96/Wan2.1-I2V-14B-480P-gguf" in str(exc.value)


def test_a_wan_t2v_gguf_is_refused_as_t2v(state, tmp_path):
    t2v = dict(state)
    t2v["patch_embedding.weight"] = torch.randn(256, 16, 1, 2, 2)
    path = write_gguf(tmp_path / "wan-t2v.gguf", t2v, {k: file_type(k, v, "Q8_0") for k, v in t2v.items()})
    with pytest.raises(PipelineLoadError, match="this is a T2V model"):
        load_infinitetalk_model(path)


def test_damaged_files_are_refused(state, tmp_path):
    good = write_gguf(tmp_path / "good.gguf", state, {k: file_type(k, v, "Q8_0") for k, v in state.items()})
    data = good.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 5000])
    with pytest.raises(PipelineLoadError, match="truncated"):
        read_header(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:300])
    with pytest.raises(PipelineLoadError, match="cannot be read as a GGUF file|truncated"):
        read_header(tmp_path / "head.gguf")
    (tmp_path / "text.gguf").write_bytes(b"not a model at all")
    with pytest.raises(PipelineLoadError, match="does not start with 'GGUF'"):
        read_header(tmp_path / "text.gguf")


def test_a_missing_gguf_package_says_how_to_install_it(state, tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", state, {k: file_type(k, v, "Q8_0") for k, v in state.items()})
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(PipelineLoadError, match="needs the 'gguf' Python package") as exc:
        read_header(path)
    assert "pip install" in str(exc.value)


def test_full_size_q4_k_m_header_maps_and_sizes(manifests_dir):
    """The real 14B names and shapes with city96's Q4_K_M types: identified, key-checked, ~10.3 GB kept."""
    tensors = json.loads((manifests_dir / "wan21_i2v_14b_480p.json").read_text())["tensors"]
    entries, kept = {}, 0
    for key, shape in tensors.items():
        qtype = _q4_k_m_type(key, shape)
        dtype = qtype or ("F32" if len(shape) != 2 or "modulation" in key else "F16")
        if qtype:
            block, size = BLOCK_SIZES[qtype]
            kept += int(np.prod(shape)) // block * size
        entries[key] = TensorEntry(key, dtype, tuple(shape))
    header = FileHeader(manifests_dir / "wan2.1-i2v-14b-480p-Q4_K_M.gguf", entries, "gguf",
                        {"general.architecture": "wan", "general.file_type": "Q4_K_M"})
    ident, layouts = identify_headers([header])
    assert (ident.kind, ident.variant, ident.size, ident.quantization) == ("wan_dit", "i2v", "14B", "Q4_K")
    config = detect_dit_config(layouts[0].shapes)
    model = InfiniteTalkDiT(config, device="meta")
    check_keys({k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}, layouts)
    assert len(layouts[0].quantized_keys) == 40 * 12  # self q k v o, cross q k v o k_img v_img, ffn.0/2
    assert 10.0e9 < kept < 10.7e9


def test_the_loader_node_lists_gguf_where_comfyui_does_not(state, tmp_path, monkeypatch):
    from tests.pack_loader import PACK_MODULE, load_pack

    load_pack()
    host_mod = importlib.import_module(f"{PACK_MODULE}.nodes.host")
    loaders = importlib.import_module(f"{PACK_MODULE}.nodes.loaders")
    models = tmp_path / "models"
    for sub in ("diffusion_models", "model_patches", "loras"):
        (models / sub).mkdir(parents=True)
    from safetensors.torch import save_file

    base = {k: v for k, v in state.items() if not is_audio_key(k)}
    audio = {k: v for k, v in state.items() if is_audio_key(k)}
    save_file(base, models / "diffusion_models" / "wan.safetensors")
    (tmp_path / "elsewhere").mkdir()  # a linked model folder (as users share models between installs)
    (models / "diffusion_models" / "q").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    write_gguf(models / "diffusion_models" / "q" / "wan-Q4_K_M.gguf", base, _mixed_types(base))
    write_gguf(models / "model_patches" / "Wan2_1-InfiniteTalk_Single_Q8.gguf", audio,
               {k: file_type(k, v, "Q8_0") for k, v in audio.items()})
    (models / "diffusion_models" / "not-a-model.gguf").write_bytes(b"GGUF")  # damaged: not listed
    (models / "loras" / "lora.gguf").write_bytes(b"GGUF")

    class ComfyLikeHost(host_mod.TorchHost):  # ComfyUI's lists only carry torch formats
        def model_list(self, folder):
            return [n for n in super().model_list(folder) if not n.endswith(".gguf")]

    monkeypatch.setenv("INFINITETALK_MODELS_DIR", str(models))
    for host in (host_mod.TorchHost(), ComfyLikeHost()):
        host_mod.set_host(host)
        try:
            spec = loaders.InfiniteTalkModelLoader.INPUT_TYPES()
        finally:
            host_mod.set_host(None)
        assert sorted(spec["required"]["base_model"][0]) == ["q/wan-Q4_K_M.gguf", "wan.safetensors"]
        assert spec["required"]["infinitetalk_model"][0][1:] == ["Wan2_1-InfiniteTalk_Single_Q8.gguf"]
        if isinstance(host, ComfyLikeHost):  # LoRAs are not GGUF: that list is ComfyUI's own
            assert spec["optional"]["lora_1"][0] == ["none"]


def test_the_loader_node_keeps_gguf_lora_patches_off_the_host(state, tmp_path):
    """ComfyUI's patcher adds deltas to stored values: for GGUF bytes the layer keeps the patch instead."""
    from safetensors.torch import save_file

    from tests.pack_loader import PACK_MODULE, load_pack

    load_pack()
    host_mod = importlib.import_module(f"{PACK_MODULE}.nodes.host")
    loaders = importlib.import_module(f"{PACK_MODULE}.nodes.loaders")
    path = write_gguf(tmp_path / "m.gguf", state, {k: file_type(k, v, "Q8_0") for k, v in state.items()})
    model, _ = load_infinitetalk_model(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    lora = {"blocks.0.self_attn.q.lora_down.weight": torch.randn(2, 256, generator=g),
            "blocks.0.self_attn.q.lora_up.weight": torch.randn(256, 2, generator=g),
            "time_embedding.0.lora_down.weight": torch.randn(2, 256, generator=g),  # an F16-kept weight
            "time_embedding.0.lora_up.weight": torch.randn(256, 2, generator=g)}
    save_file(lora, tmp_path / "l.safetensors")
    handed = []

    class RecordingHost(host_mod.TorchHost):
        def add_weight_patches(self, managed, patches, strength):
            handed.extend(p.key for p in patches.patches)
            return managed

    host = RecordingHost()
    loaders._apply_loras(host, host.manage(model), [(str(tmp_path / "l.safetensors"), 0.5)])
    assert handed == ["time_embedding.0.weight"]
    assert [s for _, s in model.blocks[0].self_attn.q.gguf_patches] == [0.5]
