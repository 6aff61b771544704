"""Turn an API-format workflow into an editor (UI) workflow, using a server's /object_info.

    python scripts/api_to_ui.py --server http://127.0.0.1:8188 example_workflows/api/X.json example_workflows/X.json
    python scripts/api_to_ui.py --object-info object_info.json IN.json OUT.json

/object_info says, per node, which inputs are widgets (and their order) and which are sockets, so the
UI file fills ``widgets_values`` in the editor's order and wires ``links``. Nodes are laid out in
columns by graph depth. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_WIDTH, ROW_GAP, NODE_WIDTH = 420, 40, 380


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_KINDS


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in order.get(section, list(specs)):
            out.append((name, specs[name]))
    return out


def _depths(graph: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            links = [v[0] for v in graph[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(s) for s in links), default=-1)
        return depth[node_id]

    for node_id in graph:
        visit(node_id)
    return depth


def convert(graph: dict, object_info: dict) -> dict:
    depth = _depths(graph)
    ids = {node_id: int(node_id) for node_id in graph}
    nodes, links, rows = [], [], {}
    outputs: dict[tuple[str, int], list[int]] = {}
    for order, node_id in enumerate(sorted(graph, key=lambda n: (depth[n], int(n)))):
        node, info = graph[node_id], object_info[graph[node_id]["class_type"]]
        inputs, widgets = [], []
        for name, spec in _ordered_inputs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list):
                link_id = len(links) + 1
                kind = spec[0] if isinstance(spec[0], str) else "COMBO"
                links.append([link_id, ids[value[0]], value[1], ids[node_id], len(inputs), kind])
                outputs.setdefault((value[0], value[1]), []).append(link_id)
                entry = {"name": name, "type": kind, "link": link_id}
                if _is_widget(spec):
                    entry["widget"] = {"name": name}
                    widgets.append(spec[1].get("default") if len(spec) > 1 else None)
                inputs.append(entry)
            elif _is_widget(spec):
                widgets.append(value if name in node["inputs"] else (spec[1] if len(spec) > 1 else {}).get("default"))
            else:
                inputs.append({"name": name, "type": spec[0], "link": None})
        column = depth[node_id]
        y = rows.get(column, 0)
        height = 60 + 26 * (len(inputs) + len(widgets))
        rows[column] = y + height + ROW_GAP
        nodes.append({
            "id": ids[node_id], "type": node["class_type"], "pos": [column * COLUMN_WIDTH, y],
            "size": [NODE_WIDTH, height], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [], "title": node.get("_meta", {}).get("title", info.get("display_name")),
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
    for ui_node in nodes:
        info = object_info[ui_node["type"]]
        names = info.get("output_name", info["output"])
        ui_node["outputs"] = [
            {"name": names[i], "type": kind, "slot_index": i,
             "links": outputs.get((str(ui_node["id"]), i), [])}
            for i, kind in enumerate(info["output"])
        ]
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="URL of a running ComfyUI")
    source.add_argument("--object-info", help="a saved /object_info JSON")
    parser.add_argument("api_json", type=Path)
    parser.add_argument("ui_json", type=Path)
    args = parser.parse_args()
    if args.server:
        with urllib.request.urlopen(args.server.rstrip("/") + "/object_info", timeout=60) as r:
            object_info = json.load(r)
    else:
        object_info = json.loads(Path(args.object_info).read_text())
    ui = convert(json.loads(args.api_json.read_text()), object_info)
    args.ui_json.write_text(json.dumps(ui, indent=1) + "\n")


if __name__ == "__main__":
    main()
