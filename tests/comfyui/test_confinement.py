"""In a real ComfyUI: hostile job names and filename prefixes cannot write or delete outside output/,
also when the prefix arrives through a link (ComfyUI skips VALIDATE_INPUTS for linked inputs)."""
from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui
HERE = Path(__file__).resolve().parent


def _helpers():
    spec = importlib.util.spec_from_file_location("real_server_helpers", HERE / "test_real_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _errors(history: dict) -> list[str]:
    return [m[1].get("exception_message", "") for m in history.get("status", {}).get("messages", [])
            if m[0] == "execution_error"]


def test_job_name_outside_the_jobs_folder_is_refused_and_nothing_moves(server, tmp_path):
    h = _helpers()
    files = {k: v for k, v in h.write_inputs(tmp_path / "in", 0.8).items() if k != "video"}
    base = server["base"]
    (base / "output").mkdir(exist_ok=True)
    (base / "output" / "earlier_render.mp4").write_bytes(b"precious")
    before = _tree(base)
    for name in ("..", "../../escaped", str(tmp_path / "abs"), "a/b"):
        graph = h.tiny_graph("infinitetalk_image_to_video")
        graph["12"]["inputs"].update(job_name=name, resume=False)
        history = h.run(server, graph, files)
        errors = _errors(history)
        assert errors and errors[0].startswith("E_INPUT_VALIDATION: job_name") and " Fix: " in errors[0], errors
    assert (base / "output" / "earlier_render.mp4").read_bytes() == b"precious"
    assert not (tmp_path / "abs").exists()
    new = {p for p in _tree(base) - before if not p.startswith(("temp", "input", "user"))}
    assert not new, new


def test_linked_filename_prefix_cannot_escape_the_output_folder(server, tmp_path):
    h = _helpers()
    files = {k: v for k, v in h.write_inputs(tmp_path / "in", 0.8).items() if k != "video"}
    graph = h.tiny_graph("infinitetalk_image_to_video")
    combine = next(k for k, v in graph.items() if v["class_type"] == "InfiniteTalkVideoCombine")
    graph["90"] = {"class_type": "PrimitiveString", "inputs": {"value": "../../evil"}}
    graph[combine]["inputs"]["filename_prefix"] = ["90", 0]
    history = h.run(server, graph, files)
    errors = _errors(history)
    assert errors and errors[0].startswith("E_INPUT_VALIDATION: filename_prefix") and "Fix:" in errors[0], errors
    base = server["base"]
    assert not list(base.parent.glob("**/evil*.mp4")), "an mp4 was written outside output/"
    assert not list((base / "output").rglob("*.part.mp4"))


def test_typed_filename_prefix_gets_one_error_on_its_own_field(server):
    h = _helpers()
    graph = h.tiny_graph("infinitetalk_image_to_video")
    combine = next(k for k, v in graph.items() if v["class_type"] == "InfiniteTalkVideoCombine")
    graph[combine]["inputs"]["filename_prefix"] = "/etc/evil"
    body = json.dumps({"prompt": graph, "client_id": "x"}).encode()
    request = urllib.request.Request(server["url"] + "/prompt", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    reply = json.loads(err.value.read())
    node_errors = reply["node_errors"][combine]["errors"]
    assert len(node_errors) == 1 and node_errors[0]["extra_info"]["input_name"] == "filename_prefix"
    assert "absolute path" in node_errors[0]["details"]
