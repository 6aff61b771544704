"""The pack imports the way ComfyUI imports it, and every node definition is one ComfyUI accepts."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NATIVE_TYPES = {"IMAGE", "MASK", "AUDIO", "VIDEO", "VAE", "CONDITIONING", "CLIP_VISION"}


def test_pack_imports_without_comfyui_or_heavy_modules():
    # a fresh interpreter: the import itself must not pull ComfyUI, transformers or librosa
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("somepack", {str(REPO / '__init__.py')!r},
                                                      submodule_search_locations=[{str(REPO)!r}])
        m = importlib.util.module_from_spec(spec); sys.modules["somepack"] = m; spec.loader.exec_module(m)
        assert str({str(REPO)!r}) not in sys.path
        heavy = [k for k in sys.modules if k.split(".")[0] in ("comfy", "transformers", "librosa", "nodes")]
        print(len(m.NODE_CLASS_MAPPINGS), m.WEB_DIRECTORY, heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["7", "./js", "[]"]


def test_ids_prefixed_and_display_names(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("InfiniteTalk") and cls.__name__ == node_id
        assert cls.CATEGORY == "InfiniteTalk"
        assert callable(getattr(cls, cls.FUNCTION))
        assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        assert cls.DESCRIPTION


def _check_widget(node_id, name, kind, opts):
    if kind in ("INT", "FLOAT"):
        lo, hi, default = opts["min"], opts["max"], opts["default"]
        assert lo <= default <= hi, (node_id, name)
        if kind == "INT":
            assert all(isinstance(v, int) for v in (lo, hi, default)), (node_id, name)
    elif kind == "BOOLEAN":
        assert isinstance(opts["default"], bool), (node_id, name)
    elif kind == "STRING":
        assert isinstance(opts["default"], str), (node_id, name)


def test_every_input_is_valid_and_has_a_tooltip(pack, models_dir):
    custom_outputs = {t for cls in pack.NODE_CLASS_MAPPINGS.values() for t in cls.RETURN_TYPES}
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                kind, opts = entry[0], entry[1]
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
                if isinstance(kind, list):  # combo
                    if "default" in opts:
                        assert opts["default"] in kind, (node_id, name)
                elif kind in WIDGET_TYPES:
                    _check_widget(node_id, name, kind, opts)
                else:
                    assert kind in NATIVE_TYPES or kind in custom_outputs, (node_id, name, kind)


def test_defaults_are_the_reference_values(pack):
    sampler = pack.NODE_CLASS_MAPPINGS["InfiniteTalkStreamingSampler"].INPUT_TYPES()["required"]
    expected = {"chunk_frames": 81, "context_frames": 9, "steps": 40, "text_guidance": 5.0,
                "audio_guidance": 4.0, "seed": 42, "color_strength": 1.0, "color_method": "lab"}
    assert {k: sampler[k][1]["default"] for k in expected} == expected
    optional = pack.NODE_CLASS_MAPPINGS["InfiniteTalkStreamingSampler"].INPUT_TYPES()["optional"]
    assert optional["apg_momentum"][1]["default"] == -0.75 and optional["apg_norm_threshold"][1]["default"] == 55


def _tiny_model_files(pack, models_dir) -> None:
    """A tiny Wan DiT and its audio weights (real key layout), plus files the loader cannot use."""
    from importlib import import_module

    from safetensors.torch import save_file

    core = pack.__name__ + ".infinitetalk_core"
    state = import_module(core + ".stream.standins").tiny_dit(seed=0).state_dict()
    is_audio = import_module(core + ".model.layouts").is_audio_key
    save_file({k: v for k, v in state.items() if not is_audio(k)}, models_dir / "diffusion_models" / "wan.safetensors")
    save_file({k: v for k, v in state.items() if is_audio(k)}, models_dir / "model_patches" / "it.safetensors")
    save_file({k: v for k, v in state.items() if is_audio(k)}, models_dir / "diffusion_models" / "audio_only.safetensors")
    (models_dir / "diffusion_models" / "broken.safetensors").write_bytes(b"x")  # damaged: not listed
    save_file({k: v for k, v in state.items() if not is_audio(k)}, models_dir / "model_patches" / "base.safetensors")


def test_model_lists_come_from_the_models_folder(pack, models_dir):
    _tiny_model_files(pack, models_dir)
    (models_dir / "audio_encoders" / "w2v.safetensors").write_bytes(b"x")
    (models_dir / "loras" / "sub").mkdir()
    (models_dir / "loras" / "sub" / "l.safetensors").write_bytes(b"x")
    (models_dir / "loras" / "notes.txt").write_text("not a model")
    loader = pack.NODE_CLASS_MAPPINGS["InfiniteTalkModelLoader"].INPUT_TYPES()
    assert loader["required"]["base_model"][0] == ["wan.safetensors"]  # only what it can load
    assert loader["required"]["infinitetalk_model"][0][1:] == ["it.safetensors"]
    assert loader["optional"]["lora_1"][0] == ["none", "sub/l.safetensors"]
    w2v = pack.NODE_CLASS_MAPPINGS["InfiniteTalkWav2VecLoader"].INPUT_TYPES()
    assert w2v["required"]["wav2vec_model"][0] == ["w2v.safetensors"]


def test_files_the_loader_cannot_load_are_refused_with_the_reason(pack, models_dir):
    _tiny_model_files(pack, models_dir)
    validate = pack.NODE_CLASS_MAPPINGS["InfiniteTalkModelLoader"].VALIDATE_INPUTS
    assert validate("wan.safetensors", "it.safetensors") is True
    assert "holds only InfiniteTalk/MultiTalk audio weights" in validate("audio_only.safetensors", "it.safetensors")
    assert validate("broken.safetensors", "it.safetensors").startswith("base_model: E_")
    refused = validate("wan.safetensors", "base.safetensors")
    assert refused.startswith("infinitetalk_model:") and "not InfiniteTalk or MultiTalk" in refused
    assert "put the file into ComfyUI/models/diffusion_models/" in validate("gone.safetensors", "it.safetensors")
    assert validate(None, None) is True  # linked from another node: checked when the loader runs


GOOD = {"chunk_frames": 81, "context_frames": 9, "steps": 40, "size": "auto_480", "width": 832, "height": 480}


@pytest.mark.parametrize("change, field, needle", [
    ({"chunk_frames": 80}, "chunk_frames", "chunk_frames=80 is not 4n+1"),
    ({"context_frames": 8}, "context_frames", "context_frames=8 is not 4n+1"),
    ({"chunk_frames": 41, "context_frames": 41}, "context_frames", "must be smaller than chunk_frames"),
    ({"size": "custom", "width": 840}, "width", "width=840 is not a multiple of 16"),
    ({"size": "custom", "height": 490}, "height", "height=490 is not a multiple of 16"),
    ({"steps": 0}, "steps", "steps=0 is outside"),
    ({"max_frames": -5}, "max_frames", "max_frames=-5 is negative"),
    ({"chunk_frames": "81"}, "chunk_frames", "is not a whole number"),
])
def test_sampler_names_the_one_wrong_field(pack_module, change, field, needle):
    checks = pack_module("nodes.sampler_checks")
    with pytest.raises(ValueError) as err:
        checks.check_sampler_settings({**GOOD, **change})
    message = str(err.value)
    assert message.startswith("E_INPUT_VALIDATION:") and needle in message and " Fix: " in message
    others = {"chunk_frames", "context_frames", "width", "height", "steps", "max_frames"} - {field}
    assert not any(f"{o}=" in message for o in others if o != "chunk_frames" or field != "context_frames")


def test_sampler_accepts_good_settings_and_has_no_multi_field_validate(pack, pack_module):
    checks = pack_module("nodes.sampler_checks")
    checks.check_sampler_settings(GOOD)  # auto size: width/height are not used
    checks.check_sampler_settings({**GOOD, "chunk_frames": 49, "context_frames": 13, "size": "custom",
                                   "width": 512, "height": 768})
    # ComfyUI files a VALIDATE_INPUTS failure under every argument: the sampler must not have one
    assert not hasattr(pack.NODE_CLASS_MAPPINGS["InfiniteTalkStreamingSampler"], "VALIDATE_INPUTS")


def test_video_combine_rejects_escaping_prefix(pack):
    validate = pack.NODE_CLASS_MAPPINGS["InfiniteTalkVideoCombine"].VALIDATE_INPUTS
    assert validate(filename_prefix="InfiniteTalk/x") is True
    assert validate(filename_prefix="../../etc/x").startswith("E_INPUT_VALIDATION")
