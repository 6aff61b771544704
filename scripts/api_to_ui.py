"""Turn an API-format workflow into an editor (UI) workflow, using a server's /object_info.

Regenerate the example UI workflows after changing a node's inputs (start ComfyUI with this pack first):

    python scripts/api_to_ui.py --server http://127.0.0.1:8188 \
        example_workflows/api/X.json example_workflows/X.json
    python scripts/api_to_ui.py --object-info object_info.json IN.json OUT.json

/object_info says, per node, which inputs are widgets (and their order) and which are sockets. The editor
loads ``widgets_values`` by position over every widget it creates, and it creates more widgets than the
node has inputs: a "control after generate" combo right after an INT named seed/noise_seed (or any
INT/FLOAT/COMBO whose options carry ``control_after_generate``), a filter-list text after a controlled
COMBO, and upload buttons (plus an audio player) at the end of LoadImage/LoadVideo/LoadAudio-style
nodes. Those slots are filled here exactly as ComfyUI frontend 1.49.6 saves them; a value missing
there shifts every later widget by one. Options this script does not know how the editor lays out
(remote combos, custom widget types, ...) are refused instead of guessed. Nodes are laid out in columns
by graph depth, with heights the editor actually gives them. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
SEED_NAMES = ("seed", "noise_seed")  # the editor gives these INTs a control widget even without the option
# options after which the editor appends widgets at the end of the node: (values, extra height in px)
UPLOAD_OPTIONS = {
    "image_upload": (["image"], 260),  # "choose file to upload" button (value "image"), image preview
    "animated_image_upload": (["image"], 260),
    "video_upload": (["image"], 260),  # same button, video preview
    # audio player (not saved, but the editor leaves its slot as null) + upload button (saved as null
    # after a reload: the editor fills buttons positionally from the slot the player left)
    "audio_upload": ([None, None], 0),
}
UNSUPPORTED_OPTIONS = ("remote", "widgetType", "socketless", "forceInput", "defaultInput", "multi_select",
                       "multiselect", "hidden")
# frontend 1.49.6 sizes (LiteGraph): title bar above pos, slot rows, widget rows (20 px + 4 px margin)
TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_ROW, BODY_PADDING = 30, 20, 24, 14
MULTILINE_HEIGHT = 110  # a multiline STRING (textarea) the editor grows to fill a node of default size
AUDIO_PLAYER_HEIGHT = 54
# js/infinitetalk.js keeps a strip free for its status line between these nodes' sockets and widgets
STATUS_LINE_NODES, STATUS_LINE_HEIGHT = ("InfiniteTalkStreamingSampler", "InfiniteTalkVideoCombine"), 22
NODE_WIDTH, TEXT_NODE_WIDTH, COLUMN_GAP, ROW_GAP = 380, 420, 60, 30


class UnsupportedInput(ValueError):
    pass


def _kind(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec: list) -> bool:
    return _kind(spec) in WIDGET_KINDS


def _default(spec: list):
    options = _options(spec)
    if "default" in options:
        return options["default"]
    if _kind(spec) == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(_kind(spec))


def _control(name: str, spec: list) -> tuple[str, str] | None:
    """The editor's "control after generate" widget for this widget as (its name, its default value),
    or None when it adds none. A string option is both the default and (frontend quirk, the same for
    core nodes such as PrimitiveInt) the control widget's name."""
    kind, flag = _kind(spec), _options(spec).get("control_after_generate")
    if kind == "INT" and (flag if flag is not None else name in SEED_NAMES):
        value = flag if isinstance(flag, str) else "randomize"
    elif kind == "FLOAT" and flag:
        value = flag if isinstance(flag, str) else "fixed"
    elif kind == "COMBO" and flag:
        value = flag if isinstance(flag, str) else "randomize"
    else:
        return None
    if value not in CONTROL_VALUES:
        raise UnsupportedInput(f"{name}: control_after_generate={value!r} is not one of {CONTROL_VALUES}")
    return (flag if isinstance(flag, str) else "control_after_generate"), value


def _check_supported(node_type: str, name: str, spec: list) -> None:
    kind, options = _kind(spec), _options(spec)
    if kind.startswith("COMFY_") or kind in ("COLOR", "IMAGEUPLOAD"):
        raise UnsupportedInput(f"{node_type}.{name}: input type {kind} has editor widgets this script "
                               "does not lay out")
    bad = [key for key in UNSUPPORTED_OPTIONS if options.get(key)]
    if bad:
        raise UnsupportedInput(f"{node_type}.{name}: option(s) {bad} change the editor's widgets in ways "
                               "this script does not reproduce; extend scripts/api_to_ui.py first")


def _ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    order = info.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in order.get(section, list(specs)):
            out.append((name, specs[name], section == "optional"))
    return out


def widget_layout(node_type: str, info: dict, values: dict) -> tuple[list[tuple[str, object]], int]:
    """The editor's widgets of a node as (name, value) in order (``values`` = the API inputs; linked and
    absent ones take the default), and the extra height of previews/players in pixels."""
    widgets: list[tuple[str, object]] = []
    tail: list[tuple[str, object]] = []
    extra = 0
    for name, spec, _ in _ordered_inputs(info):
        _check_supported(node_type, name, spec)
        if not _is_widget(spec):
            continue
        value = values.get(name, _default(spec))
        widgets.append((name, _default(spec) if isinstance(value, list) else value))
        control = _control(name, spec)
        if control is not None:
            widgets.append(control)
            if _kind(spec) == "COMBO":
                widgets.append(("control_filter_list", ""))
        for option, (slots, height) in UPLOAD_OPTIONS.items():
            if _options(spec).get(option):
                tail += [("upload" if i == len(slots) - 1 else "audioUI", v) for i, v in enumerate(slots)]
                extra += height + (AUDIO_PLAYER_HEIGHT if option == "audio_upload" else 0)
                break
    return widgets + tail, extra


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


def _node_size(node_type: str, info: dict, sockets: int, widgets: list, extra: int) -> list[int]:
    multiline = sum(1 for _name, spec, _optional in _ordered_inputs(info)
                    if _is_widget(spec) and _kind(spec) == "STRING" and _options(spec).get("multiline"))
    rows = len(widgets) - multiline - sum(1 for name, _value in widgets if name == "audioUI")
    slots = max(sockets, len(info["output"]))
    height = BODY_PADDING + SLOT_HEIGHT * slots + WIDGET_ROW * rows + MULTILINE_HEIGHT * multiline + extra
    if node_type in STATUS_LINE_NODES:
        height += STATUS_LINE_HEIGHT
    return [TEXT_NODE_WIDTH if multiline else NODE_WIDTH, height]


def convert(graph: dict, object_info: dict) -> dict:
    depth = _depths(graph)
    ids = {node_id: int(node_id) for node_id in graph}
    missing = sorted({n["class_type"] for n in graph.values()} - set(object_info))
    if missing:
        raise UnsupportedInput(f"the server does not know the node type(s) {missing}")
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    for order, node_id in enumerate(sorted(graph, key=lambda n: (depth[n], int(n)))):
        node, info = graph[node_id], object_info[graph[node_id]["class_type"]]
        inputs, sockets = [], 0
        for name, spec, optional in _ordered_inputs(info):
            value = node["inputs"].get(name)
            entry = {"localized_name": name, "name": name, "type": _kind(spec)}
            if optional:
                entry["shape"] = 7  # the editor draws optional inputs hollow
            if _is_widget(spec):
                entry["widget"] = {"name": name}
            else:
                sockets += 1
            entry["link"] = None
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, ids[value[0]], value[1], ids[node_id], len(inputs), _kind(spec)])
                outputs.setdefault((value[0], value[1]), []).append(link_id)
                entry["link"] = link_id
            inputs.append(entry)
        widgets, extra = widget_layout(node["class_type"], info, node["inputs"])
        names = info.get("output_name", info["output"])
        nodes.append({
            "id": ids[node_id], "type": node["class_type"], "pos": [0, 0],
            "size": _node_size(node["class_type"], info, sockets, widgets, extra),
            "flags": {}, "order": order, "mode": 0,
            "inputs": inputs,
            "outputs": [{"localized_name": names[i], "name": names[i], "type": kind,
                         "links": outputs.get((node_id, i), []), "slot_index": i}
                        for i, kind in enumerate(info["output"])],
            "title": node.get("_meta", {}).get("title", info.get("display_name")),
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": [value for _, value in widgets],
            "widgets_values_named": {name: value for name, value in widgets if name != "audioUI"},
        })
    _layout(nodes, {n["id"]: depth[str(n["id"])] for n in nodes})
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 60]}}, "version": 0.4}


def _layout(nodes: list[dict], depth: dict[int, int]) -> None:
    """Columns by graph depth; within a column nodes are stacked with their title bars and a gap."""
    columns: dict[int, list[dict]] = {}
    for node in nodes:
        columns.setdefault(depth[node["id"]], []).append(node)
    x = 0
    for column in sorted(columns):
        y = TITLE_HEIGHT
        for node in columns[column]:
            node["pos"] = [x, y]
            y += node["size"][1] + ROW_GAP + TITLE_HEIGHT
        x += max(n["size"][0] for n in columns[column]) + COLUMN_GAP


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
    try:
        ui = convert(json.loads(args.api_json.read_text()), object_info)
    except UnsupportedInput as error:
        parser.exit(2, f"api_to_ui.py: {error}\n")
    args.ui_json.write_text(json.dumps(ui, indent=1) + "\n")


if __name__ == "__main__":
    main()
