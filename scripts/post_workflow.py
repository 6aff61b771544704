"""Post an API workflow to a running ComfyUI, with your image/audio/video swapped in, follow its progress
over the websocket and download the result. Standard library only.

    python scripts/post_workflow.py example_workflows/api/infinitetalk_image_to_video.json \\
        --server http://127.0.0.1:8188 --image face.png --audio speech.wav --out result.mp4
    python scripts/post_workflow.py example_workflows/api/infinitetalk_video_dubbing.json \\
        --video source.mp4 --audio new_speech.wav --set 12.steps=8 --set 1.lora_1=lightx2v.safetensors

Files are uploaded through /upload/image (ComfyUI stores every upload kind there) and replace the
``image`` of LoadImage, the ``audio`` of LoadAudio and the ``file`` of LoadVideo. ``--set NODE.INPUT=VALUE``
changes any widget (VALUE is parsed as JSON when it can be). Exit status 0 when the run succeeded.
"""
from __future__ import annotations

import argparse
import base64
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

SWAPS = {"image": ("LoadImage", "image"), "audio": ("LoadAudio", "audio"), "video": ("LoadVideo", "file")}


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


def prepare(graph: dict, server: str, files: dict[str, Path], sets: list[str]) -> dict:
    for key, path in files.items():
        node_type, widget = SWAPS[key]
        targets = [n for n in graph.values() if n["class_type"] == node_type]
        if not targets:
            raise SystemExit(f"--{key} given, but the workflow has no {node_type} node")
        name = upload(server, path)
        for node in targets:
            node["inputs"][widget] = name
    for item in sets:
        target, _, raw = item.partition("=")
        node_id, _, name = target.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workflow", type=Path, help="API-format workflow JSON")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--audio", type=Path)
    parser.add_argument("--video", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    parser.add_argument("--out", type=Path, help="where to save the mp4 (default: its server name)")
    args = parser.parse_args(argv)
    files = {k: getattr(args, k) for k in SWAPS if getattr(args, k) is not None}
    graph = prepare(json.loads(args.workflow.read_text()), args.server, files, args.set)
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
