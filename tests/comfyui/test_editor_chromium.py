"""Headless Chromium drives the editor of a real ComfyUI (Chrome DevTools Protocol, stdlib only).

* Both UI workflows load with every node type registered, no console error from our extension, every
  widget holding the value of its API workflow input (a missing slot in ``widgets_values`` shifts all
  later widgets), the editor saving exactly the ``widgets_values`` it loaded, no node overlapping
  another, and ``app.graphToPrompt()`` producing the API workflow (class types, literal values, links).
* Queued from the editor with tiny models, interrupted, and queued again from the editor, the image
  workflow resumes the same job folder (the seed's control is "fixed"), and Video Combine then shows one
  playable <video>.

Set INFINITETALK_SCREENSHOTS=DIR to keep PNG screenshots of the loaded workflows and of the finished run.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SHOTS = os.environ.get("INFINITETALK_SCREENSHOTS")
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
pytestmark = [pytest.mark.comfyui, pytest.mark.chromium,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _post_workflow():
    return _module("post_workflow", REPO / "scripts" / "post_workflow.py")


def _real_server_helpers():
    return _module("real_server_helpers", Path(__file__).with_name("test_real_server.py"))


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


class DevTools:
    def __init__(self, ws_url: str):
        self.ws = _post_workflow().WebSocket(ws_url, timeout=120)
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

    def screenshot(self, name: str) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            data = self.call("Page.captureScreenshot", format="png")["data"]
            (Path(SHOTS) / f"{name}.png").write_bytes(base64.b64decode(data))


@pytest.fixture()
def browser(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
                             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=2400,1500", "about:blank"],
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
        proc.terminate()  # the browser we started, by its handle
        proc.wait(timeout=20)


def _wait_for(tools: DevTools, expression: str, seconds: float = 90, what: str | None = None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = tools.evaluate(expression)
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what or expression}")


def _open_editor(browser: DevTools, server: dict) -> None:
    browser.call("Runtime.enable")
    browser.call("Page.enable")
    browser.call("Page.navigate", url=server["url"] + "/")
    _wait_for(browser, "!!(window.app && window.app.graph && window.app.extensions && window.LiteGraph)")
    _wait_for(browser, "window.app.extensions.some(e => e.name === 'infinitetalk.dubbing')")


def _load(browser: DevTools, path: Path, settle_ms: int = 1500) -> list[dict]:
    """Load a UI workflow; every node as {id, type, widgets [[name, value]], saved (widgets_values the
    editor would save), bound (x, y, w, h with the title bar)}."""
    return browser.evaluate(f"""(async () => {{
        await window.app.loadGraphData({path.read_text()}, true, true, {json.dumps(path.stem)});
        await new Promise(r => setTimeout(r, {settle_ms}));
        window.app.canvas.setDirty(true, true);
        window.app.canvas.draw(true, true);
        return window.app.graph.nodes.map(n => ({{
            id: n.id, type: n.type, registered: !!window.LiteGraph.registered_node_types[n.type],
            widgets: (n.widgets || []).map(w => [w.name, w.value === undefined ? null : w.value]),
            saved: n.serialize().widgets_values ?? [],
            bound: Array.from(n.getBounding()),
        }}));
    }})()""")


def _frame_all(browser: DevTools) -> None:
    """Close dialogs (a new profile gets the Templates browser) and zoom so the whole graph is visible."""
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape",
                     windowsVirtualKeyCode=27)
    browser.evaluate("""(async () => {
        const c = window.app.canvas, b = window.app.graph.nodes.map(n => n.getBounding());
        const x0 = Math.min(...b.map(r => r[0])), y0 = Math.min(...b.map(r => r[1]));
        const x1 = Math.max(...b.map(r => r[0] + r[2])), y1 = Math.max(...b.map(r => r[1] + r[3]));
        const W = c.canvas.width / devicePixelRatio, H = c.canvas.height / devicePixelRatio;
        const s = Math.min((W - 120) / (x1 - x0), (H - 160) / (y1 - y0));
        c.ds.scale = s; c.ds.offset = [-x0 + 90 / s, -y0 + 110 / s];
        c.setDirty(true, true); c.draw(true, true);
        await new Promise(r => setTimeout(r, 500));
    })()""")


def _widget_inputs(info: dict) -> list[str]:
    names = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            if isinstance(spec[0], list) or spec[0] in WIDGET_KINDS:
                names.append(name)
    return names


def _overlaps(nodes: list[dict]) -> list[tuple]:
    out = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bound"], b["bound"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append((a["type"], a["id"], b["type"], b["id"]))
    return out


def _console_problems(browser: DevTools) -> list[str]:
    browser.evaluate("1")  # drain pending events
    problems = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown" or method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            problems.append(json.dumps(params)[:500])
    return [p for p in problems if "infinitetalk" in p.lower()]


def test_editor_loads_both_workflows_as_their_api_workflows(server, browser):
    # the Templates browser lists them under the pack's folder name and opens these very files
    templates = get_json(server["url"] + "/api/workflow_templates")
    (folder,) = [k for k, names in templates.items() if {p.stem for p in UI_WORKFLOWS} <= set(names)]
    for path in UI_WORKFLOWS:
        served = get_json(f"{server['url']}/api/workflow_templates/{folder}/{path.name}")
        assert served == json.loads(path.read_text())
    _open_editor(browser, server)
    object_info = get_json(server["url"] + "/object_info")
    for path in UI_WORKFLOWS:
        api = json.loads((REPO / "example_workflows" / "api" / path.name).read_text())
        file_nodes = {str(n["id"]): n for n in json.loads(path.read_text())["nodes"]}
        nodes = _load(browser, path)
        unknown = [n["type"] for n in nodes if not n["registered"]]
        assert nodes and not unknown, f"{path.name}: missing {unknown}"
        assert {"InfiniteTalkStreamingSampler", "InfiniteTalkVideoCombine"} <= {n["type"] for n in nodes}
        assert sorted(str(n["id"]) for n in nodes) == sorted(api, key=str)

        # every widget holds its API input's value, and the editor saves what it loaded
        wrong = []
        for node in nodes:
            inputs = api[str(node["id"])]["inputs"]
            widgets = dict(node["widgets"])
            for name in _widget_inputs(object_info[node["type"]]):
                literal = name in inputs and not isinstance(inputs[name], list)
                if literal and widgets.get(name) != inputs[name]:
                    wrong.append((node["type"], name, widgets.get(name), inputs[name]))
            stored = file_nodes[str(node["id"])]["widgets_values"]
            if node["saved"] != stored:
                wrong.append((node["type"], "widgets_values", node["saved"], stored))
        assert not wrong, f"{path.name}: widgets after loading differ from the API workflow: {wrong}"
        sampler = [w for n in nodes if n["type"] == "InfiniteTalkStreamingSampler" for w in n["widgets"]]
        seed = [name for name, _ in sampler].index("seed")
        assert sampler[seed + 1][1] == "fixed", sampler[seed + 1]  # the seed's control: re-queueing keeps it

        # what the editor would queue is the API workflow
        prompt = browser.evaluate("window.app.graphToPrompt().then(p => p.output)")
        assert sorted(prompt, key=str) == sorted(api, key=str)
        for node_id, node in api.items():
            got = prompt[node_id]
            assert got["class_type"] == node["class_type"], node_id
            assert got["inputs"] == node["inputs"], f"{path.name} node {node_id} ({node['class_type']})"

        overlaps = _overlaps(nodes)
        assert not overlaps, f"{path.name}: overlapping nodes {overlaps}"
        _frame_all(browser)
        browser.screenshot(path.stem)
    time.sleep(1.0)
    ours = _console_problems(browser)
    assert not ours, ours


def _jobs(server) -> dict[str, Path]:
    root = server["base"] / "output" / "InfiniteTalk_jobs"
    return {p.name: p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}


def _chunks_done(job: Path) -> int:
    try:
        return len(json.loads((job / "manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


def _queue_from_editor(browser: DevTools, server) -> str:
    """app.queuePrompt (the Run button: control-after-generate applies) -> the new prompt's id."""
    before = set(get_json(server["url"] + "/history"))
    queue = get_json(server["url"] + "/queue")
    before |= {item[1] for item in queue["queue_running"] + queue["queue_pending"]}
    browser.evaluate("window.app.queuePrompt(0, 1).then(() => true)")
    deadline = time.time() + 60
    while time.time() < deadline:
        queue = get_json(server["url"] + "/queue")
        ids = {item[1] for item in queue["queue_running"] + queue["queue_pending"]}
        ids |= set(get_json(server["url"] + "/history"))
        new = ids - before
        if new:
            assert len(new) == 1, new
            return new.pop()
        time.sleep(0.3)
    errors = browser.evaluate("JSON.stringify(window.app.lastNodeErrors ?? null)")
    pytest.fail(f"the editor queued nothing (node errors: {errors})")


def _finished(server, prompt_id: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = get_json(server["url"] + f"/history/{prompt_id}").get(prompt_id)
        if history and history.get("status", {}).get("status_str") in ("success", "error"):
            return history
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s")


def test_editor_queue_interrupt_and_requeue_resumes_the_same_job(server, browser, tmp_path):
    helpers, post = _real_server_helpers(), _post_workflow()
    name = "infinitetalk_image_to_video"
    files = helpers.write_inputs(tmp_path, 4.0)  # 100 frames -> 8 chunks of 17 (5 context)
    api = json.loads((REPO / "example_workflows" / "api" / f"{name}.json").read_text())
    tiny = helpers.tiny_graph(name)
    tiny["12"]["inputs"]["steps"] = 4
    tiny["9"]["inputs"]["image"] = post.upload(server["url"], files["image"])
    tiny["8"]["inputs"]["audio"] = post.upload(server["url"], files["audio"])
    edits = {node_id: {k: v for k, v in node["inputs"].items() if v != api[node_id]["inputs"].get(k)}
             for node_id, node in tiny.items()}
    assert not any(isinstance(v, list) for e in edits.values() for v in e.values())
    assert "seed" not in edits["12"] and "job_name" not in edits["12"]  # the job folder follows the inputs

    _open_editor(browser, server)
    _load(browser, REPO / "example_workflows" / f"{name}.json")
    browser.evaluate(f"""(() => {{
        const edits = {json.dumps(edits)};
        for (const [id, values] of Object.entries(edits)) {{
            const node = window.app.graph.getNodeById(Number(id));
            for (const [name, value] of Object.entries(values)) {{
                const widget = node.widgets.find(w => w.name === name);
                if (!widget) throw new Error(`node ${{id}} has no widget ${{name}}`);
                widget.value = value;
            }}
        }}
        return true;
    }})()""")
    jobs_before = set(_jobs(server))

    first = _queue_from_editor(browser, server)
    deadline = time.time() + 600
    while time.time() < deadline:
        new = [job for name_, job in _jobs(server).items() if name_ not in jobs_before]
        if new and _chunks_done(new[0]) >= 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail("no chunk was finished in 600 s")
    urllib.request.urlopen(urllib.request.Request(server["url"] + "/interrupt", data=b"{}"), timeout=30)
    history = _finished(server, first, 300)
    assert history["status"]["status_str"] == "error", "the run finished before the interrupt"
    (job,) = [job for name_, job in _jobs(server).items() if name_ not in jobs_before]
    done = json.loads((job / "manifest.json").read_text())["chunks"]
    assert 1 <= len(done) < 8
    first_chunk = job / done[0]["file"]
    stamp = first_chunk.stat().st_mtime_ns
    seed = browser.evaluate("window.app.graph.getNodeById(12).widgets.find(w => w.name === 'seed').value")
    assert seed == 42, "queueing changed the seed"

    second = _queue_from_editor(browser, server)
    history = _finished(server, second, 900)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[-3000:]
    new_jobs = [n for n in _jobs(server) if n not in jobs_before]
    assert new_jobs == [job.name], "re-queueing started a second job"
    assert _chunks_done(job) == 8
    assert first_chunk.stat().st_mtime_ns == stamp  # finished chunks were reused, not regenerated
    for prompt_id in (first, second):
        queued = get_json(server["url"] + f"/history/{prompt_id}")[prompt_id]["prompt"][2]
        assert queued["12"]["inputs"]["seed"] == 42

    # Video Combine: exactly one player, showing the mp4 it wrote, and the browser can load it
    (video,) = _post_workflow().videos(history)
    players = _wait_for(browser, f"""(async () => {{
        const all = [...document.querySelectorAll("video")];
        const live = all.filter(v => v.dataset.infinitetalkLive).map(v => v.currentSrc || v.src || "");
        const videos = all.filter(v => !v.dataset.infinitetalkLive);
        const name = {json.dumps(video["filename"])};
        const ours = videos.filter(v => (v.currentSrc || v.src || "").includes(name));
        if (ours.length === 0) return null;
        const v = ours[0];
        if (v.readyState < 1) {{ v.load(); await new Promise(r => setTimeout(r, 1000)); }}
        const response = await fetch(v.currentSrc || v.src);
        return {{count: videos.length, ours: ours.length, status: response.status, live,
                 type: response.headers.get("content-type"), ready: v.readyState, duration: v.duration,
                 playable: v.canPlayType("video/mp4; codecs=\\"avc1.64001f, mp4a.40.2\\"")}};
    }})()""", seconds=60, what="a <video> of the Video Combine output")
    assert players["count"] == 1 and players["ours"] == 1, players
    # the sampler node's live player showed the render's live output (the newest chunk, or the playlist)
    assert len(players["live"]) == 1 and "live" in players["live"][0], players
    assert players["status"] == 200 and "mp4" in (players["type"] or ""), players
    if players["playable"]:  # a Chromium build without H.264 cannot decode it; the file is still served
        assert players["ready"] >= 1 and players["duration"] > 1.5, players
    status = browser.evaluate("window.app.graph.getNodeById(12).infinitetalkStatus || ''")
    assert status, "the Streaming Sampler shows no progress line"
    _frame_all(browser)
    browser.screenshot("after_run")
    assert not _console_problems(browser)

    # re-roll chunk 3 from the editor: the widgets, then Run; chunks 1-2 stay, 3-8 are made again
    before = {c["index"]: c["sha256"] for c in json.loads((job / "manifest.json").read_text())["chunks"]}
    browser.evaluate("""(() => {
        const node = window.app.graph.getNodeById(12);
        node.widgets.find(w => w.name === 'regenerate_from_chunk').value = 3;
        node.widgets.find(w => w.name === 'reroll_seed').value = 77;
        return true;
    })()""")
    third = _queue_from_editor(browser, server)
    history = _finished(server, third, 900)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[-3000:]
    body = json.loads((job / "manifest.json").read_text())
    after = {c["index"]: c["sha256"] for c in body["chunks"]}
    assert body["rerolls"] == {"2": 77} and len(after) == 8
    assert [after[i] == before[i] for i in range(8)] == [True, True] + [False] * 6
    assert [n for n in _jobs(server) if n not in jobs_before] == [job.name]
