"""Headless Chromium opens the editor of a real ComfyUI, loads both UI workflows and finds every node
type registered and no console error from our extension (Chrome DevTools Protocol, stdlib only)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [pytest.mark.comfyui, pytest.mark.chromium,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")]


def _websocket_class():
    spec = importlib.util.spec_from_file_location("post_workflow", REPO / "scripts" / "post_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WebSocket


class DevTools:
    def __init__(self, ws_url: str):
        self.ws = _websocket_class()(ws_url, timeout=60)
        self.next_id, self.events = 0, []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send_text(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            opcode, payload = self.ws.receive()
            if opcode != 1:
                continue
            message = json.loads(payload)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(message["error"])
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")


@pytest.fixture()
def browser(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
                             f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                page = next(p for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration):
                time.sleep(0.2)
        else:
            pytest.fail("chromium did not start")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_for(tools: DevTools, expression: str, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if tools.evaluate(expression):
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {expression}")


def test_editor_loads_both_workflows_without_missing_nodes(server, browser):
    browser.call("Runtime.enable")
    browser.call("Page.enable")
    browser.call("Page.navigate", url=server["url"] + "/")
    _wait_for(browser, "!!(window.app && window.app.graph && window.app.extensions && window.LiteGraph)")
    _wait_for(browser, "window.app.extensions.some(e => e.name === 'infinitetalk.dubbing')")
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        workflow = path.read_text()
        types = browser.evaluate(f"""(async () => {{
            await window.app.loadGraphData({workflow}, true, true, {json.dumps(path.stem)});
            const nodes = window.app.graph.nodes || window.app.graph._nodes;
            return nodes.map(n => [n.type, !!window.LiteGraph.registered_node_types[n.type]]);
        }})()""")
        assert types and all(ok for _, ok in types), f"{path.name}: missing {[t for t, ok in types if not ok]}"
        assert {"InfiniteTalkStreamingSampler", "InfiniteTalkVideoCombine"} <= {t for t, _ in types}
    time.sleep(1.0)
    browser.evaluate("1")  # drain pending events
    problems = []
    for event in browser.events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown" or event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            problems.append(json.dumps(params)[:500])
    ours = [p for p in problems if "infinitetalk" in p.lower()]
    assert not ours, ours
