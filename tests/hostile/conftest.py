"""Fixtures of the hostile-input suite: tiny models once per session, a sandboxed output folder per test,
in-process renders, and render subprocesses (forked from one warm zygote so each costs milliseconds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hostile_harness as hh  # noqa: E402

SPAWN = os.environ.get("HOSTILE_SPAWN", "fork")  # "exec": one fresh interpreter per scenario


@pytest.fixture(scope="session")
def pack():
    return hh.load_pack()


@pytest.fixture(scope="session")
def models(tmp_path_factory, golden_dir, pack):
    root = tmp_path_factory.mktemp("hostile_models")
    hh.write_tiny_models(root, golden_dir)
    return root


@pytest.fixture(autouse=True)
def _hostile_models_env(request, monkeypatch):
    """Every hostile test sees the tiny models folder (set per test: nothing leaks into other suites)."""
    if "models" in request.fixturenames or "world" in request.fixturenames:
        monkeypatch.setenv("INFINITETALK_MODELS_DIR", str(request.getfixturevalue("models")))


@dataclass
class World:
    nodes: dict
    model: object
    wav2vec: object
    feats: object  # 29 frames: 3 chunks
    feats_1: object  # 13 frames: 1 chunk
    refs: object
    features_file: Path
    models: Path


@pytest.fixture(scope="session")
def world(models, pack, tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    host = hh.sub("nodes.host")
    host.set_host(host.TorchHost())
    nodes = pack.NODE_CLASS_MAPPINGS
    saved = os.environ.get("INFINITETALK_MODELS_DIR")
    os.environ["INFINITETALK_MODELS_DIR"] = str(models)
    try:
        return _build_world(models, pack, tmp_path_factory, nodes, torch, save_file)
    finally:
        if saved is None:
            os.environ.pop("INFINITETALK_MODELS_DIR", None)
        else:
            os.environ["INFINITETALK_MODELS_DIR"] = saved


def _build_world(models, pack, tmp_path_factory, nodes, torch, save_file):
    model = hh.load_model()
    (wav2vec,) = nodes["InfiniteTalkWav2VecLoader"]().load(hh.WAV2VEC_DIR, "fp32", "cpu")
    feats, *_ = nodes["InfiniteTalkAudioEncode"]().encode(wav2vec, hh.speech(hh.SECONDS_3_CHUNKS), False)
    assert feats.num_frames == hh.FRAMES_3_CHUNKS
    feats_1 = hh.make_features([feats.features[0][:13].clone()], 13, hh.speech(0.52))
    refs, _ = nodes["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0,
                                                               image=hh.reference_image())
    features_file = tmp_path_factory.mktemp("hostile_features") / "features.safetensors"
    save_file({"speaker_1": feats.features[0].contiguous()}, features_file,
              metadata={"fingerprint": feats.fingerprint})  # Audio Encode's: not a digest of the bf16 rows
    torch.manual_seed(0)
    return World(nodes, model, wav2vec, feats, feats_1, refs, features_file, models)


@dataclass
class Sandbox:
    root: Path  # what a bad path could reach: sentinel, output, temp all below it
    output: Path
    temp: Path
    sentinel: Path

    @property
    def jobs(self) -> Path:
        return self.output / hh.JOBS

    def job(self, name: str = "hostile") -> Path:
        return self.jobs / name

    def state(self) -> dict:
        return hh.snapshot(self.root)


@pytest.fixture()
def box(tmp_path, monkeypatch, world):
    root = tmp_path / "sandbox"
    output, temp = root / "output", root / "temp"
    output.mkdir(parents=True)
    temp.mkdir()
    sentinel = root / "sentinel.txt"
    sentinel.write_text("must survive")
    monkeypatch.setenv("INFINITETALK_OUTPUT_DIR", str(output))
    monkeypatch.setenv("INFINITETALK_TEMP_DIR", str(temp))
    host = hh.sub("nodes.host")
    host.set_host(host.TorchHost())
    yield Sandbox(root, output, temp, sentinel)
    host.set_host(host.TorchHost())


@pytest.fixture()
def render(world, box):
    """``render(**overrides)`` -> (sampler outputs, the VAE used) with the session's tiny model."""

    def run(vae=hh.UNSET, feats=None, refs=None, **overrides):
        vae = hh.ComfyVAE() if vae is hh.UNSET else vae
        inputs = hh.sampler_inputs(overrides.pop("model", world.model), refs or world.refs,
                                   feats or world.feats, vae, **overrides)
        return world.nodes["InfiniteTalkStreamingSampler"]().sample(**inputs), vae

    return run


def coded(exc_info_or_exc):
    """The message of a raised exception (pytest ExceptionInfo or the exception)."""
    exc = getattr(exc_info_or_exc, "value", exc_info_or_exc)
    return str(exc)


# ---------------------------------------------------------------- subprocess renders

class Child:
    def __init__(self, workdir: Path, pid: int, proc: subprocess.Popen | None = None):
        self.workdir, self.pid, self.proc = workdir, pid, proc

    def exit_status(self):
        if self.proc is not None:
            return self.proc.poll()
        f = self.workdir / "exit.json"
        return json.loads(f.read_text())["status"] if f.is_file() else None

    def wait(self, timeout: float = 90.0) -> dict:
        deadline = time.time() + timeout
        while self.exit_status() is None:
            if time.time() > deadline:
                os.kill(self.pid, 9)
                raise AssertionError(f"render child {self.pid} ran past {timeout} s:\n{self.output()}")
            time.sleep(0.02)
        return self.result()

    def result(self) -> dict:
        f = self.workdir / "result.json"
        if not f.is_file():
            return {"ok": None, "status": self.exit_status(), "output": self.output()}
        out = json.loads(f.read_text())
        out["status"] = self.exit_status()
        return out

    def output(self) -> str:
        f = self.workdir / "output.txt"
        return f.read_text()[-4000:] if f.is_file() else ""

    def decodes(self) -> int:
        f = self.workdir / "progress.txt"
        return sum(1 for ln in f.read_text().splitlines() if ln.startswith("decode")) if f.is_file() else 0


class Spawner:
    def __init__(self, warm_cfg: dict | None = None):
        self.proc = None
        self.count = 0
        self.warm_cfg = warm_cfg

    def _zygote(self):
        if self.proc is None or self.proc.poll() is not None:
            warm = [json.dumps(self.warm_cfg)] if self.warm_cfg else []
            self.proc = subprocess.Popen([sys.executable, str(HERE / "hostile_child.py"), "--zygote", *warm],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(hh.REPO))
            line = self.proc.stdout.readline().decode().strip()
            assert line == "READY", f"zygote did not start: {line!r}"
        return self.proc

    def start(self, workdir: Path, cfg: dict) -> Child:
        workdir.mkdir(parents=True, exist_ok=True)
        self.count += 1
        if SPAWN == "exec":
            (workdir / "scenario.json").write_text(json.dumps({"cfg": cfg, "workdir": str(workdir)}))
            out = open(workdir / "output.txt", "ab")
            proc = subprocess.Popen([sys.executable, str(HERE / "hostile_child.py"),
                                     str(workdir / "scenario.json")], stdout=out, stderr=out,
                                    cwd=str(hh.REPO))
            return Child(workdir, proc.pid, proc)
        z = self._zygote()
        z.stdin.write((json.dumps({"cfg": cfg, "workdir": str(workdir)}) + "\n").encode())
        z.stdin.flush()
        line = z.stdout.readline().decode().strip()
        assert line.startswith("PID "), f"zygote answered {line!r}"
        return Child(workdir, int(line.split()[1]))

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def spawner(world):
    s = Spawner({"models": str(world.models), "features": str(world.features_file)})
    yield s
    s.close()


@pytest.fixture()
def child_cfg(world, box):
    """``child_cfg(**extra)`` -> a scenario dict rendering the 3-chunk job 'hostile' into the sandbox."""

    def make(**extra):
        cfg = {"models": str(world.models), "output": str(box.output), "temp": str(box.temp),
               "features": str(world.features_file)}
        cfg.update(extra)
        return cfg

    return make


@pytest.fixture()
def spawn(spawner, tmp_path):
    counter = iter(range(1000))

    def start(cfg: dict) -> Child:
        return spawner.start(tmp_path / f"child{next(counter)}", cfg)

    return start


@dataclass
class Reference:
    output: Path
    job: Path
    frames_sha: str
    count: int
    hashes: list


@pytest.fixture(scope="session")
def reference(spawner, world, tmp_path_factory) -> Reference:
    """An uninterrupted 3-chunk render in a child: what every resumed/repaired job must equal."""
    root = tmp_path_factory.mktemp("hostile_reference")
    cfg = {"models": str(world.models), "output": str(root / "output"), "temp": str(root / "temp"),
           "features": str(world.features_file)}
    child = spawner.start(root / "child", cfg)
    res = child.wait()
    assert res.get("ok"), f"reference render failed: {res}"
    job = Path(res["job"])
    return Reference(root / "output", job, res["frames_sha"], res["count"], hh.chunk_hashes(job))


@pytest.fixture(scope="session")
def partial(spawner, world, tmp_path_factory) -> Path:
    """An output folder whose job was SIGKILLed while decoding chunk 2 (chunks 0 and 1 committed)."""
    root = tmp_path_factory.mktemp("hostile_partial")
    cfg = {"models": str(world.models), "output": str(root / "output"), "temp": str(root / "temp"),
           "features": str(world.features_file), "kill_at_decode": 3}
    child = spawner.start(root / "child", cfg)
    res = child.wait()
    assert res.get("status") == -9, f"the partial render was not killed: {res}"
    return root / "output"
