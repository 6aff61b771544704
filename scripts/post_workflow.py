"""Post an API workflow to a running ComfyUI, with your image/audio/video swapped in, follow its progress
over the websocket and download the result. Standard library only.

    python scripts/post_workflow.py example_workflows/api/infinitetalk_image_to_video.json \\
        --server http://127.0.0.1:8188 --image face.png --audio speech.wav --out result.mp4
    python scripts/post_workflow.py example_workflows/api/infinitetalk_video_dubbing.json \\
        --video source.mp4 --audio new_speech.wav --set 12.steps=8 --set 1.lora_1=lightx2v.safetensors
    python scripts/post_workflow.py two_speakers.json --image two.png --audio anna.wav --audio-2 ben.wav

Files are uploaded through /upload/image (ComfyUI stores every upload kind there). Each file goes to the
one loader that feeds its role, found by following the graph's links: --audio to the LoadAudio feeding
InfiniteTalk Audio Encode's ``audio``, --audio-2 to the one feeding its ``audio_2``, --image/--video to
the LoadImage/LoadVideo feeding the Reference Sampler. Nothing is overwritten by guesswork: several
candidates, or a loader of that kind that feeds no role, is an error naming the node ids; then give
files per node with ``--set ID.audio=FILE`` (``.image``/``.file`` for images/videos; an existing local
FILE is uploaded). ``--set NODE.INPUT=VALUE`` changes any widget (VALUE is parsed as JSON when it can
be). Exit status 0 when the run succeeded, 2 when the files cannot be mapped. Chapter mode: chapter_farm.py.
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import mimetypes
import os
import socket
import struct
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

# --flag -> (loader class, its file widget, (consumer class, consumer input) the loader must feed)
SWAPS = {
    "image": ("LoadImage", "image", ("InfiniteTalkReferenceSampler", "image")),
    "video": ("LoadVideo", "file", ("InfiniteTalkReferenceSampler", "video")),
    "audio": ("LoadAudio", "audio", ("InfiniteTalkAudioEncode", "audio")),
    "audio_2": ("LoadAudio", "audio", ("InfiniteTalkAudioEncode", "audio_2")),
}
PRIMARY = {"LoadImage": "image", "LoadVideo": "video", "LoadAudio": "audio"}  # the role without a consumer


class WorkflowError(ValueError):
    """The graph and the command line do not say unambiguously which node gets which file."""


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _links(graph: dict) -> dict[str, list[tuple[str, str]]]:
    """node id -> [(consumer id, consumer input name)] for every link in an API graph."""
    out: dict[str, list[tuple[str, str]]] = {}
    for node_id, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
            if is_link and str(value[0]) in graph:
                out.setdefault(str(value[0]), []).append((str(node_id), name))
    return out


def _fed_inputs(graph: dict, links: dict, start: str, consumers: set[str]) -> set[tuple[str, str]]:
    """(consumer class, input) pairs that ``start`` reaches, following links through any other nodes."""
    found, seen, todo = set(), {start}, [start]
    while todo:
        for target, name in links.get(todo.pop(), []):
            kind = graph[target]["class_type"]
            if kind in consumers:
                found.add((kind, name))  # stop here: a consumer's outputs are no longer the file
            elif target not in seen:
                seen.add(target)
                todo.append(target)
    return found


def _order(ids) -> list[str]:
    return sorted(ids, key=lambda i: (len(i), i))


def _nodes(loader: str, ids) -> str:
    """"LoadAudio node 8" / "LoadAudio nodes 8 and 14"."""
    ids = _order(ids)
    listed = ", ".join(ids[:-1]) + " and " + ids[-1] if len(ids) > 1 else ids[0]
    return f"{loader} node{'s' if len(ids) > 1 else ''} {listed}"


def _feeds(ids) -> str:
    return "feeds" if len(ids) == 1 else "feed"


def _pin_hint(ids, widget: str) -> str:
    options = " ".join(f"--set {i}.{widget}=FILE" for i in _order(ids))
    return f"Fix: choose the file per node with {options}."


def _input(spec) -> str:
    return f"{spec[2][0]}'s {spec[2][1]} input"


def plan_files(graph: dict, keys, pinned=frozenset()) -> tuple[dict[str, str], list[str]]:
    """Which node gets which file: ({flag key: node id}, warnings). No network, no changes to ``graph``.

    A loader has a role when its output reaches the role's consumer input, directly or through other
    nodes: the LoadAudio feeding Audio Encode's ``audio`` gets --audio, the one feeding ``audio_2`` gets
    --audio-2, the LoadImage/LoadVideo feeding the Reference Sampler gets --image/--video. Loaders in
    ``pinned`` (their file given with --set ID.WIDGET=...) are left to that. In a graph without the
    consumer node a single loader takes the flag. When a flag of a loader kind is given, every other
    loader of that kind must be accounted for: several candidates for one flag, a loader feeding several
    roles or none raise WorkflowError naming the node ids. A second speaker left at the graph's own
    file, and a flag for a role the graph does not have, are reported (warning / error).
    """
    keys = set(keys)
    unknown = keys - set(SWAPS)
    if unknown:
        raise WorkflowError(f"Unknown file option(s) {sorted(unknown)}. "
                            f"Fix: use {', '.join(map(flag, SWAPS))}.")
    links = _links(graph)
    plan: dict[str, str] = {}
    warnings: list[str] = []
    for loader in dict.fromkeys(spec[0] for spec in SWAPS.values()):
        roles = {key: spec for key, spec in SWAPS.items() if spec[0] == loader}
        widget = next(iter(roles.values()))[1]
        nodes = [str(i) for i, n in graph.items() if n.get("class_type") == loader]
        free = [i for i in nodes if i not in pinned]
        consumers = {spec[2][0] for spec in roles.values()}
        has_consumer = any(n.get("class_type") in consumers for n in graph.values())
        if has_consumer:
            reached = {i: _fed_inputs(graph, links, i, consumers) for i in free}
            fed = {i: {key for key, spec in roles.items() if spec[2] in reached[i]} for i in free}
        else:  # a foreign graph: a lone loader is unambiguous, several are not
            fed = {i: {PRIMARY[loader]} if len(free) == 1 else set() for i in free}
        if keys & set(roles):
            several = [i for i in free if len(fed[i]) > 1]
            if several:
                both = " and ".join(_input(roles[k]) for k in roles if k in fed[several[0]])
                raise WorkflowError(f"{_nodes(loader, several)} {_feeds(several)} both {both}, so it is not clear "
                                    f"which file it should get. {_pin_hint(several, widget)}")
            idle = [i for i in free if not fed[i]]
            if idle and has_consumer:
                targets = " nor ".join(_input(spec) for spec in roles.values())
                raise WorkflowError(f"{_nodes(loader, idle)} {_feeds(idle)} {'neither ' if len(roles) > 1 else 'no '}"
                                    f"{targets}, so it is not clear whether to replace its file. "
                                    f"{_pin_hint(idle, widget)}")
            if idle:
                missing = " or ".join(sorted(consumers))
                raise WorkflowError(f"The workflow has {_nodes(loader, idle)} and no {missing}, "
                                    f"so it is not clear which one to replace. {_pin_hint(idle, widget)}")
        for key, spec in roles.items():
            candidates = [i for i in free if key in fed[i]]
            if key in keys:
                if len(candidates) > 1:
                    raise WorkflowError(f"{flag(key)} would replace the file of {_nodes(loader, candidates)} "
                                        f"(all feed {_input(spec)}). {_pin_hint(candidates, widget)}")
                if not nodes:
                    raise WorkflowError(f"{flag(key)} was given, but the workflow has no {loader} node. "
                                        f"Fix: drop {flag(key)}, or use a workflow with a {loader}.")
                if not candidates:
                    set_here = [i for i in nodes if i in pinned]
                    note = f" other than {_nodes(loader, set_here)} (given with --set)" if set_here else ""
                    raise WorkflowError(f"{flag(key)} was given, but no {loader} node{note} feeds "
                                        f"{_input(spec)}. Fix: drop {flag(key)}, or wire a {loader} into "
                                        f"{_input(spec)}.")
                plan[key] = candidates[0]
            elif key != PRIMARY[loader] and candidates:
                current = graph[candidates[0]]["inputs"].get(widget)
                warnings.append(f"warning: {_nodes(loader, candidates)} {_feeds(candidates)} {_input(spec)} but {flag(key)} "
                                f"was not given; the workflow's own file {current!r} is kept.")
    return plan, warnings


def parse_sets(graph: dict, sets: list[str]) -> list[tuple[str, str, object]]:
    """``NODE.INPUT=VALUE`` strings -> (node id, input, value); VALUE is parsed as JSON when it can be."""
    out = []
    for item in sets:
        target, eq, raw = item.partition("=")
        node_id, dot, name = target.partition(".")
        if not eq or not dot or not name:
            raise WorkflowError(f"--set {item!r} is not NODE.INPUT=VALUE. Fix: write it like --set 12.steps=8.")
        if node_id not in graph:
            raise WorkflowError(f"--set {item!r} names node {node_id!r}, which the workflow does not have. "
                                f"Fix: use one of the node ids {', '.join(_order(graph))}.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.append((node_id, name, value))
    return out


def _file_widget(node: dict, name: str) -> bool:
    """True for a loader's file widget (--set on it uploads a local file first)."""
    return any(spec[0] == node.get("class_type") and spec[1] == name for spec in SWAPS.values())


def _request(server: str, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
    req = urllib.request.Request(server.rstrip("/") + path, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def upload(server: str, path: Path) -> str:
    """multipart POST to /upload/image; returns the name to put into the loader's widget."""
    boundary = uuid.uuid4().hex
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: {kind}\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n--{boundary}--\r\n".encode()
    reply = json.loads(_request(server, "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    return reply["name"] if not reply.get("subfolder") else f"{reply['subfolder']}/{reply['name']}"


def prepare(graph: dict, server: str, files: dict[str, Path], sets: list[str], log=print) -> dict:
    """Swap the files in (``files``: {"image"|"video"|"audio"|"audio_2": path}) and apply ``--set``s.

    The mapping is ``plan_files``'s; ``--set ID.audio=FILE`` (or ``.image``/``.file`` on a loader) with
    an existing local FILE uploads it and sets that node only.
    """
    edits = parse_sets(graph, sets)
    pinned = {node_id for node_id, name, _ in edits if _file_widget(graph[node_id], name)}
    plan, warnings = plan_files(graph, files, pinned)
    for line in warnings:
        log(line)
    for key, node_id in plan.items():
        graph[node_id]["inputs"][SWAPS[key][1]] = upload(server, Path(files[key]))
        log(f"{flag(key)} -> {graph[node_id]['class_type']} node {node_id}")
    for node_id, name, value in edits:
        if _file_widget(graph[node_id], name) and isinstance(value, str) and Path(value).is_file():
            value = upload(server, Path(value))
        graph[node_id]["inputs"][name] = value
    return graph


class WebSocket:
    """The smallest RFC 6455 client that reads ComfyUI's event stream (text and binary frames)."""

    def __init__(self, url: str, timeout: float = 5.0):
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + ("?" + parts.query if parts.query else "")
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"websocket handshake failed: {head[:80]!r}")

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = self.sock.recv(n - len(data))
            if not part:
                raise ConnectionError("websocket closed")
            data += part
        return data

    def receive(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame (1 = text, 2 = binary, 8 = close)."""
        b1, b2 = self._exact(2)
        length = b2 & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._exact(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._exact(8))[0]
        mask = self._exact(4) if b2 & 0x80 else None
        payload = self._exact(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return b1 & 0x0F, payload

    def send_text(self, text: str) -> None:
        """One masked text frame (clients must mask, RFC 6455 §5.3)."""
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def close(self) -> None:
        self.sock.close()


def follow(server: str, client_id: str, prompt_id: str, log=print, timeout: float = 3600) -> dict:
    """Print progress until the prompt finishes; returns its /history entry."""
    ws_url = server.replace("http", "ws", 1).rstrip("/") + f"/ws?clientId={client_id}"
    deadline = time.time() + timeout
    try:
        ws = WebSocket(ws_url)
    except OSError:
        ws = None  # fall back to polling
    try:
        while time.time() < deadline:
            if ws is not None:
                try:
                    opcode, payload = ws.receive()
                except TimeoutError:
                    opcode, payload = 0, b""
                if opcode == 1:
                    event = json.loads(payload)
                    data = event.get("data", {})
                    if event["type"] == "infinitetalk.progress":
                        eta = data.get("eta")
                        log(f"chunk {data['chunk'] + (0 if data.get('chunk_done') else 1)}/{data['chunks']} "
                            f"step {data.get('step')}/{data.get('steps')} ETA {eta and round(eta)}s")
                    elif event["type"] == "executing" and data.get("prompt_id") == prompt_id:
                        log(f"executing node {data.get('node')}")
                    elif event["type"] == "execution_error":
                        log(f"error: {data.get('exception_message')}")
                elif opcode == 8:
                    ws = None
            else:
                time.sleep(1.0)
            history = json.loads(_request(server, f"/history/{prompt_id}")).get(prompt_id)
            if history and history.get("status", {}).get("completed") is not None and \
                    history["status"].get("status_str") in ("success", "error"):
                return history
    finally:
        if ws is not None:
            ws.close()
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


def submit(server: str, graph: dict, client_id: str) -> str:
    body = json.dumps({"prompt": graph, "client_id": client_id}).encode()
    try:
        reply = json.loads(_request(server, "/prompt", body, {"Content-Type": "application/json"}))
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"the server refused the workflow: {exc.read().decode()[:2000]}")
    return reply["prompt_id"]


def videos(history: dict) -> list[dict]:
    return [item for out in history.get("outputs", {}).values() for item in out.get("images", [])
            if str(item.get("filename", "")).endswith(".mp4")]


def _parser() -> argparse.ArgumentParser:
    """The command line (chapter mode: --servers and/or --chapters, see scripts/chapter_farm.py)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workflow", type=Path, help="API-format workflow JSON")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--audio", type=Path, help="speaker 1 (LoadAudio -> Encode's audio)")
    parser.add_argument("--audio-2", dest="audio_2", type=Path, help="speaker 2 (LoadAudio -> Encode's audio_2)")
    parser.add_argument("--video", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    parser.add_argument("--out", type=Path, help="where to save the mp4 (default: its server name)")
    _chapter_farm().add_arguments(parser)
    return parser


def _chapter_farm():
    """scripts/chapter_farm.py, loaded by path once (this script is run, and tested, as a file)."""
    name = "post_workflow_chapter_farm"
    if name not in sys.modules:  # why: dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("chapter_farm.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def main(argv: list[str] | None = None) -> int:
    """The command: 0 success, 1 the run failed, 2 bad input (chapter mode: scripts/chapter_farm.py)."""
    args = _parser().parse_args(argv)
    files = {k: getattr(args, k) for k in SWAPS if getattr(args, k) is not None}
    missing = [f"{flag(k)} {p}" for k, p in files.items() if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}.", file=sys.stderr)
        return 2
    if args.servers or args.chapters:  # chapter mode (scripts/chapter_farm.py)
        return _chapter_farm().main(SimpleNamespace(**globals()), args, files)
    try:
        graph = prepare(json.loads(args.workflow.read_text()), args.server, files, args.set,
                        log=lambda line: print(line, file=sys.stderr))
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client_id = uuid.uuid4().hex
    prompt_id = submit(args.server, graph, client_id)
    history = follow(args.server, client_id, prompt_id)
    if history["status"]["status_str"] != "success":
        print(json.dumps(history["status"], indent=1), file=sys.stderr)
        return 1
    for item in videos(history):
        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
        target = args.out or Path(item["filename"])
        target.write_bytes(_request(args.server, f"/view?{query}"))
        print(f"saved {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
