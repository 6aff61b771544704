"""Example workflows reference existing nodes with valid inputs; the JS helpers pass node's test runner."""
from __future__ import annotations

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
                  "CLIPVisionLoader": ("CLIP_VISION",)}
FILE_COMBOS = {"base_model", "infinitetalk_model", "wav2vec_model", "lora_1", "lora_2"}


def test_both_example_workflows_exist():
    assert [p.stem for p in API_WORKFLOWS] == ["infinitetalk_image_to_video", "infinitetalk_video_dubbing"]
    assert [p.stem for p in UI_WORKFLOWS] == ["infinitetalk_image_to_video", "infinitetalk_video_dubbing"]


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


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_helpers_with_node_test_runner():
    out = subprocess.run(["node", "--test", "js/tests"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout
