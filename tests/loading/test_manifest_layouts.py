"""The full-size model on ``meta`` vs every manifested file layout, through the loader's own key mapping.

The manifests (shared/manifests) list names and shapes of the real files (no weights). Each layout is
turned into header entries with its dtypes, mapped with ``map_layout`` and checked with ``check_keys``,
exactly as ``load_infinitetalk_model`` does before it reads any data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from infinitetalk_core.model.checkpoint import FileHeader, TensorEntry
from infinitetalk_core.model.config import detect_dit_config
from infinitetalk_core.model.dit import InfiniteTalkDiT
from infinitetalk_core.model.identify import identify_headers
from infinitetalk_core.model.load_checks import check_keys
from infinitetalk_core.model.lora import parse_lora

AUDIO_LINEAR = re.compile(r"^blocks\.\d+\.audio_cross_attn\.(q_linear|kv_linear|proj)\.weight$")


def _manifest(d, name):
    m = json.loads((d / name).read_text())
    if "tensors" not in m:
        m["tensors"] = json.loads((d / m["tensors_from"]).read_text())["tensors"]
    return m


def _header(
    tensors: dict, dtype_of, prefix: str = "", extra: dict | None = None, name="x.safetensors"
) -> FileHeader:
    entries = {prefix + k: TensorEntry(prefix + k, dtype_of(k, s), tuple(s)) for k, s in tensors.items()}
    for k, s in (extra or {}).items():
        dtype = "F8_E4M3" if k == "scaled_fp8" else "F32"
        entries[prefix + k] = TensorEntry(prefix + k, dtype, tuple(s))
    return FileHeader(Path(name), entries, "safetensors")


def _fp8_rule(extra: dict):
    scaled = {k[: -len(".scale_weight")] + ".weight" for k in extra if k.endswith(".scale_weight")}
    return lambda k, s: "F8_E4M3" if k in scaled else "F16"


BASE_LAYOUTS = {
    "original_f32": ("wan21_i2v_14b_480p.json", ""),
    "comfy_fp16": ("comfy_wan21_i2v_480p_14b_fp16.json", ""),
    "comfy_bf16_prefixed": ("comfy_wan21_i2v_480p_14b_bf16.json", "model.diffusion_model."),
    "comfy_fp8_scaled": ("comfy_wan21_i2v_480p_14b_fp8_scaled.json", ""),
    "comfy_fp8_scaled_prefixed": ("comfy_wan21_i2v_480p_14b_fp8_scaled.json", "model.diffusion_model."),
}
AUDIO_LAYOUTS = [
    "infinitetalk_single.json",
    "infinitetalk_multi.json",
    "multitalk.json",
    "comfy_wan21_infinitetalk_single_fp16.json",
    "kijai_infinitetalk_single_fp16.json",
    "kijai_infinitetalk_multi_fp16.json",
    "kijai_infinitetalk_single_fp8_e4m3fn_scaled.json",
]


def _base_header(d, layout: str) -> FileHeader:
    name, prefix = BASE_LAYOUTS[layout]
    m = _manifest(d, name)
    extra = m.get("extra_tensors")
    dtype = {"F32": "F32", "F16": "F16", "BF16": "BF16"}.get(m["dtype"])
    rule = _fp8_rule(extra) if extra else (lambda k, s: dtype)
    return _header(m["tensors"], rule, prefix, extra, name)


def _audio_header(d, name: str) -> FileHeader:
    m = _manifest(d, name)
    extra = m.get("extra_tensors")
    if extra:
        rule = lambda k, s: "F8_E4M3" if AUDIO_LINEAR.match(k) else "F32"  # noqa: E731
    elif "kijai" in name:
        multi = "multi" in name
        rule = lambda k, s: "F16" if AUDIO_LINEAR.match(k) or (multi and ".norm_x." in k) else "F32"  # noqa: E731
    else:
        rule = lambda k, s: "F16" if "fp16" in name else "F32"  # noqa: E731
    return _header(m["tensors"], rule, "", extra, name)


@pytest.fixture(scope="module")
def full_model_expected(manifests_dir):
    """The merged 14B InfiniteTalk model on meta, config detected from the manifests' shapes."""
    shapes = {
        **_manifest(manifests_dir, "wan21_i2v_14b_480p.json")["tensors"],
        **_manifest(manifests_dir, "infinitetalk_single.json")["tensors"],
    }
    config = detect_dit_config(shapes)
    model = InfiniteTalkDiT(config, device="meta")
    return config, {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def test_detected_config_is_the_14b_model(full_model_expected):
    config, expected = full_model_expected
    assert (config.dim, config.ffn_dim, config.num_layers, config.num_heads, config.in_dim) == (
        5120,
        13824,
        40,
        40,
        36,
    )
    assert (config.text_dim, config.clip_dim, config.freq_dim) == (4096, 1280, 256)
    a = config.audio
    assert (a.feature_dim, a.window, a.intermediate_dim, a.output_dim, a.context_tokens) == (
        9216,
        5,
        512,
        768,
        32,
    )
    assert len(expected) == 1633


def test_meta_model_equals_manifests(manifests_dir, full_model_expected):
    config, expected = full_model_expected
    base = _manifest(manifests_dir, "wan21_i2v_14b_480p.json")["tensors"]
    audio = _manifest(manifests_dir, "infinitetalk_single.json")["tensors"]
    assert {k: s for k, (s, _) in expected.items()} == {k: tuple(s) for k, s in {**base, **audio}.items()}
    base_model = InfiniteTalkDiT(config.with_audio(None), device="meta")
    assert {k: tuple(v.shape) for k, v in base_model.state_dict().items()} == {
        k: tuple(s) for k, s in base.items()
    }


@pytest.mark.parametrize("layout", list(BASE_LAYOUTS))
def test_base_layouts_map_to_model_keys(manifests_dir, full_model_expected, layout):
    _, expected = full_model_expected
    base = _base_header(manifests_dir, layout)
    audio = _audio_header(manifests_dir, "infinitetalk_single.json")
    identity, layouts = identify_headers([base, audio])
    check_keys(expected, layouts)  # raises on any missing/unexpected/wrong-shape key
    lay = layouts[0]
    assert identity.kind == "wan_dit" and identity.variant == "i2v" and identity.size == "14B"
    assert lay.prefix == BASE_LAYOUTS[layout][1]
    if "fp8" in layout:
        assert identity.fp8_scaled and set(lay.scales) == set(lay.fp8_keys) and len(lay.fp8_keys) == 488
        assert lay.has_fp8_marker and len(lay.ignored) == 488 + 1  # scale_input per Linear + marker
    else:
        assert not lay.scales and not lay.ignored and not identity.fp8_scaled


@pytest.mark.parametrize("name", AUDIO_LAYOUTS)
def test_audio_layouts_map_to_model_keys(manifests_dir, full_model_expected, name):
    _, expected = full_model_expected
    base = _base_header(manifests_dir, "original_f32")
    audio = _audio_header(manifests_dir, name)
    _, layouts = identify_headers([base, audio])
    check_keys(expected, layouts)
    identity, (lay,) = identify_headers([audio])
    assert identity.kind == ("multitalk" if name.startswith("multitalk") else "infinitetalk")
    assert identity.details["dim"] == 5120 and identity.details["num_layers"] == 40
    assert identity.comfy_folder == "model_patches" and len(lay.audio_keys) == 330
    assert identity.fp8_scaled == ("fp8" in name)
    if "kijai" in name and "fp8" not in name:
        assert identity.dtypes == ("F16", "F32")


def test_other_manifested_files_are_identified(manifests_dir):
    cases = {
        "wan21_vae.json": ("vae", "wan2.1", "vae"),
        "kijai_wan2_1_vae_bf16.json": ("vae", "wan2.1", "vae"),
        "chinese_wav2vec2_base_pytorch_model.json": ("wav2vec2", "12 layers x 768", "audio_encoders"),
        "kijai_wav2vec2_chinese_base_fp16.json": ("wav2vec2", "12 layers x 768", "audio_encoders"),
    }
    for name, (kind, variant, folder) in cases.items():
        identity, _ = identify_headers(
            [_header(_manifest(manifests_dir, name)["tensors"], lambda k, s: "F32")]
        )
        assert (identity.kind, identity.variant, identity.comfy_folder) == (kind, variant, folder), name


def test_lora_format_manifest_matches_the_model(manifests_dir, full_model_expected):
    """Every key of the rank-64 lightx2v/FusionX example (block 0 + non-block modules) finds its target."""
    _, expected = full_model_expected
    m = json.loads((manifests_dir / "wan21_i2v_lora_formats.json").read_text())
    state = {
        k: torch.tensor(64.0) if k.endswith(".alpha") else torch.empty(s, device="meta")
        for k, s in m["extra_tensors"].items()
    }
    patches = parse_lora(
        manifests_dir / "example.safetensors", state, {k: s for k, (s, _) in expected.items()}
    )
    assert not patches.unmatched and patches.format == "kohya"
    # 20 Linears (5 embedding/projection, 12 in block 0, head, 2 img_emb) with diff_b, + 11 norm diffs
    assert (
        len([p for p in patches.patches if p.kind == "lora"]) == 20 and len(patches.patches) == 20 + 20 + 11
    )
    assert all(p.alpha == 64.0 and p.scale == 1.0 for p in patches.patches if p.kind == "lora")
