"""Example workflows reference existing nodes with valid inputs; the UI workflows' widget slots line up
with the API workflows the way the editor fills them; the JS helpers pass node's test runner."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
API_WORKFLOWS = sorted((REPO / "example_workflows" / "api").glob("*.json"))
UI_WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
# native nodes the examples use -> their output types (checked against a real server in tests/comfyui)
NATIVE_OUTPUTS = {"LoadImage": ("IMAGE", "MASK"), "LoadAudio": ("AUDIO",), "LoadVideo": ("VIDEO",),
                  "VAELoader": ("VAE",), "CLIPLoader": ("CLIP",), "CLIPTextEncode": ("CONDITIONING",),
                  "CLIPVisionLoader": ("CLIP_VISION",), "SolidMask": ("MASK",), "MaskComposite": ("MASK",)}
FILE_COMBOS = {"base_model", "infinitetalk_model", "wav2vec_model", "lora_1", "lora_2"}


EXAMPLES = ["infinitetalk_image_to_video", "infinitetalk_image_to_video_lightx2v", "infinitetalk_video_dubbing",
            "infinitetalk_video_dubbing_keep_motion", "infinitetalk_video_dubbing_lightx2v"]


def test_every_example_workflow_exists():
    assert [p.stem for p in API_WORKFLOWS] == EXAMPLES
    assert [p.stem for p in UI_WORKFLOWS] == EXAMPLES


@pytest.mark.parametrize("name", ["infinitetalk_image_to_video", "infinitetalk_video_dubbing"])
def test_lightx2v_examples_differ_from_the_reference_ones_only_in_the_preset(name):
    """The *_lightx2v examples are the reference graph plus the distill LoRA and its 4-step settings."""
    base = json.loads((REPO / "example_workflows" / "api" / f"{name}.json").read_text())
    fast = json.loads((REPO / "example_workflows" / "api" / f"{name}_lightx2v.json").read_text())
    changed = {(k, i): v for k in base for i, v in fast[k]["inputs"].items() if base[k]["inputs"].get(i) != v}
    loader = {k for k, v in base.items() if v["class_type"] == "InfiniteTalkModelLoader"}.pop()
    sampler = {k for k, v in base.items() if v["class_type"] == "InfiniteTalkStreamingSampler"}.pop()
    assert changed == {(loader, "lora_1"): "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
                       (sampler, "steps"): 4, (sampler, "scheduler"): "distill",
                       (sampler, "text_guidance"): 1.0, (sampler, "audio_guidance"): 2.0}
    assert fast[sampler]["inputs"]["step_cache"] == "none" and fast[loader]["inputs"]["strength_1"] == 1.0


def test_keep_motion_example_is_the_dubbing_graph_plus_a_native_mask_and_denoise():
    api = REPO / "example_workflows" / "api"
    base = json.loads((api / "infinitetalk_video_dubbing.json").read_text())
    keep = json.loads((api / "infinitetalk_video_dubbing_keep_motion.json").read_text())
    sampler = {k for k, v in base.items() if v["class_type"] == "InfiniteTalkStreamingSampler"}.pop()
    changed = {(k, i): v for k in base for i, v in keep[k]["inputs"].items() if base[k]["inputs"].get(i) != v}
    mask_node = keep[sampler]["inputs"]["dub_mask"][0]
    assert keep[mask_node]["class_type"] == "MaskComposite"
    assert {keep[k]["class_type"] for k in set(keep) - set(base)} == {"SolidMask", "MaskComposite"}
    assert {key for key in changed if key[0] == sampler} == {(sampler, "denoise"), (sampler, "dub_mask"),
                                                             (sampler, "mask_feather")}
    assert 0 < keep[sampler]["inputs"]["denoise"] < 1 and keep[sampler]["inputs"]["color_reference"] == "chunk"


def _output_type(graph, link, mappings):
    node = graph[link[0]]
    cls = mappings.get(node["class_type"])
    outputs = cls.RETURN_TYPES if cls else NATIVE_OUTPUTS[node["class_type"]]
    assert 0 <= link[1] < len(outputs)
    return outputs[link[1]]


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_nodes_and_inputs_are_valid(pack, models_dir, path):
    graph = json.loads(path.read_text())
    mappings = pack.NODE_CLASS_MAPPINGS
    for node_id, node in graph.items():
        kind = node["class_type"]
        assert kind in mappings or kind in NATIVE_OUTPUTS, f"unknown node {kind}"
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in graph, f"{node_id} links to missing node {value[0]}"
                _output_type(graph, value, mappings)
        if kind not in mappings:
            continue
        spec = mappings[kind].INPUT_TYPES()
        declared = {**spec["required"], **spec.get("optional", {})}
        assert set(spec["required"]) <= set(node["inputs"]), f"{kind} misses required inputs"
        for name, value in node["inputs"].items():
            assert name in declared, f"{kind} has no input {name}"
            expected = declared[name][0]
            if isinstance(value, list):
                assert _output_type(graph, value, mappings) == expected, (kind, name)
            elif isinstance(expected, list) and name not in FILE_COMBOS:
                assert value in expected, (kind, name, value)
            elif expected in ("INT", "FLOAT"):
                opts = declared[name][1]
                assert opts["min"] <= value <= opts["max"], (kind, name)
        validate = getattr(mappings[kind], "VALIDATE_INPUTS", None)
        if validate is not None:
            import inspect

            names = inspect.signature(validate).parameters
            if not set(names) <= FILE_COMBOS:  # model files are checked against a models folder elsewhere
                assert validate(**{k: v for k, v in node["inputs"].items() if k in names}) is True


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_matches_its_api_workflow(pack, path):
    ui = json.loads(path.read_text())
    api = json.loads((REPO / "example_workflows" / "api" / path.name).read_text())
    assert sorted(n["type"] for n in ui["nodes"]) == sorted(n["class_type"] for n in api.values())
    ids = {n["id"] for n in ui["nodes"]}
    for link in ui["links"]:
        assert link[1] in ids and link[3] in ids
    assert len(ui["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())


# --- UI workflow widget slots (CI has no ComfyUI: our nodes' definitions + a saved native subset) ---
# tests/nodes/native_object_info.json: GET /object_info of ComfyUI 0.33.0 for the native nodes the examples
# use, tooltips dropped and file lists emptied. Refresh it from a running server when ComfyUI changes.
NATIVE_INFO = json.loads((Path(__file__).with_name("native_object_info.json")).read_text())
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
REGENERATE = ("python scripts/api_to_ui.py --server http://127.0.0.1:8188 "
              "example_workflows/api/{0} example_workflows/{0}")


def _object_info(pack) -> dict:
    """/object_info as ComfyUI builds it for V1 nodes (server.py node_info), JSON-normalised."""
    info = {k: v for k, v in NATIVE_INFO.items() if not k.startswith("_")}
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        info[name] = json.loads(json.dumps({
            "input": spec, "input_order": {section: list(inputs) for section, inputs in spec.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "display_name": pack.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)}))
    return info


def _api_to_ui():
    spec = importlib.util.spec_from_file_location("api_to_ui", REPO / "scripts" / "api_to_ui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_widget_slots(info: dict, inputs: dict) -> list[tuple[str, object]]:
    """What the editor (ComfyUI frontend 1.49.6) expects in widgets_values, written out independently
    of scripts/api_to_ui.py: every widget input in definition order (a linked or absent one holds its
    default); a "control after generate" value right after an INT named seed/noise_seed or any widget
    whose options carry control_after_generate; upload buttons (LoadAudio: the player's empty slot too)
    after all widgets. ("?" = any control value.)"""
    slots, tail = [], []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            options = spec[1] if len(spec) > 1 else {}
            if kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                continue
            value = inputs.get(name)
            if value is None or isinstance(value, list):
                value = ("default", options.get("default"))
            slots.append((name, value))
            control = options.get("control_after_generate", name in ("seed", "noise_seed") and kind == "INT")
            if control:
                slots.append(("control_after_generate", control if isinstance(control, str) else "?"))
            if options.get("image_upload") or options.get("video_upload"):
                tail.append(("upload", "image"))
            if options.get("audio_upload"):
                tail += [("audioUI", None), ("upload", None)]
    return slots + tail


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_widget_slots_line_up_with_the_api_workflow(pack, path):
    """A missing or extra slot (e.g. no value for the seed's control widget) shifts every later widget."""
    info = _object_info(pack)
    ui = json.loads(path.read_text())
    api = json.loads((REPO / "example_workflows" / "api" / path.name).read_text())
    for node in ui["nodes"]:
        expected = _expected_widget_slots(info[node["type"]], api[str(node["id"])]["inputs"])
        values = node["widgets_values"]
        assert len(values) == len(expected), (node["type"], [n for n, _ in expected], values)
        for (name, want), got in zip(expected, values):
            if isinstance(want, tuple):  # linked or absent input: the default
                assert want[1] is None or got == want[1], (node["type"], name, got, want)
            elif want == "?":
                assert got in CONTROL_VALUES, (node["type"], name, got)
            else:
                assert got == want and type(got) is type(want), (node["type"], name, got, want)


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_sets_every_widget_input(pack, path):
    """The editor queues every widget; the API JSON must name them all (else the two runs differ)."""
    info = _object_info(pack)
    for node_id, node in json.loads(path.read_text()).items():
        spec = info[node["class_type"]]
        widgets = [name for section in ("required", "optional") for name in spec["input_order"].get(section, [])
                   if isinstance(spec["input"][section][name][0], list)
                   or spec["input"][section][name][0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        missing = [name for name in widgets if name not in node["inputs"]]
        assert not missing, f"{path.name} node {node_id} ({node['class_type']}) lacks {missing}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_streaming_sampler_seed_control_is_fixed(pack, path):
    """Re-queueing from the editor must resume the same job: the seed must not be randomised."""
    sampler = pack.NODE_CLASS_MAPPINGS["InfiniteTalkStreamingSampler"].INPUT_TYPES()["required"]["seed"]
    assert sampler[1].get("control_after_generate") == "fixed"
    nodes = json.loads(path.read_text())["nodes"]
    node = next(n for n in nodes if n["type"] == "InfiniteTalkStreamingSampler")
    names = list(node["widgets_values_named"])
    # the control widget follows the seed; a string option also names it (as for core's PrimitiveInt)
    assert names[names.index("seed") + 1] == "fixed"
    assert node["widgets_values"][names.index("seed") + 1] == "fixed"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_is_regenerated_from_the_api_workflow(pack, path):
    """The committed UI JSON is exactly what scripts/api_to_ui.py makes from the API JSON and today's
    node definitions (so a new widget input cannot leave it stale)."""
    api = json.loads((REPO / "example_workflows" / "api" / path.name).read_text())
    expected = _api_to_ui().convert(api, _object_info(pack))
    assert json.loads(path.read_text()) == json.loads(json.dumps(expected)), \
        "stale; regenerate: " + REGENERATE.format(path.name)


def test_video_combine_muxes_the_encoded_audio():
    """Audio Encode's `audio` output (slot 1) is the mix of both speakers; LoadAudio is speaker 1 only."""
    for path in API_WORKFLOWS:
        graph = json.loads(path.read_text())
        combine = next(n for n in graph.values() if n["class_type"] == "InfiniteTalkVideoCombine")
        source = graph[combine["inputs"]["audio"][0]]
        assert source["class_type"] == "InfiniteTalkAudioEncode", path.name
        assert combine["inputs"]["audio"][1] == 1, path.name


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_helpers_with_node_test_runner():
    out = subprocess.run(["node", "--test", "js/tests"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout
