"""The render subprocess of the hostile suite.

``python hostile_child.py --zygote``: import torch and the pack once, print READY, then for each JSON line
on stdin fork one render process (its own pid: it can be SIGKILLed, can hold a lock, can get its own
rlimits), answer ``PID <n>`` and, once it exits, write ``exit.json`` into the scenario's folder.
``python hostile_child.py <scenario.json>``: run one scenario in this process (the no-fork fallback).

A scenario (dict) names the output/models folders, the features file and the faults to inject:
``slow_decode`` seconds per VAE decode, ``kill_at_decode`` n (SIGKILL itself when the n-th decode
starts: chunk n-2 is committed by then), ``fault_at_decode`` n with ``fault`` ENOSPC/EROFS/EACCES
(every later write under the output folder fails with that errno) and ``rlimit_fsize`` bytes
(RLIMIT_FSIZE, from the start or at ``fault_at_decode``). The result goes to ``result.json``.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_harness as hh  # noqa: E402


def _under(path, root: str) -> bool:
    try:
        return os.path.abspath(os.fspath(path)).startswith(root.rstrip("/") + "/") or \
            os.path.abspath(os.fspath(path)) == root
    except TypeError:
        return False


class Faults:
    """Make every write below ``root`` fail with ``code`` once armed (open for writing, mkdir, rename)."""

    def __init__(self, root: str, code: str):
        self.root, self.errno, self.armed = os.path.abspath(root), getattr(errno, code), False
        self.hits = 0

    def fail(self, path):
        self.hits += 1
        raise OSError(self.errno, os.strerror(self.errno), os.fspath(path))

    def install(self) -> None:
        real_open, real_io_open, real_mkdir = os.open, io.open, os.mkdir
        real_replace, real_rename = os.replace, os.rename
        faults = self
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def os_open(path, flags, mode=0o777, *, dir_fd=None):
            if faults.armed and flags & write_flags and _under(path, faults.root):
                faults.fail(path)
            return real_open(path, flags, mode, dir_fd=dir_fd)

        def io_open(file, mode="r", *args, **kwargs):
            if faults.armed and not isinstance(file, int) and any(c in mode for c in "wax+") \
                    and _under(file, faults.root):
                faults.fail(file)
            return real_io_open(file, mode, *args, **kwargs)

        def mkdir(path, mode=0o777, *, dir_fd=None):
            if faults.armed and _under(path, faults.root):
                faults.fail(path)
            return real_mkdir(path, mode, dir_fd=dir_fd)

        def replace(src, dst, *args, **kwargs):
            if faults.armed and _under(dst, faults.root):
                faults.fail(dst)
            return real_replace(src, dst, *args, **kwargs)

        def rename(src, dst, *args, **kwargs):
            if faults.armed and _under(dst, faults.root):
                faults.fail(dst)
            return real_rename(src, dst, *args, **kwargs)

        os.open, io.open, os.mkdir, os.replace, os.rename = os_open, io_open, mkdir, replace, rename
        import builtins

        builtins.open = io_open  # pathlib looks io.open up at call time: covered too


def _limit_fsize(limit: int | None) -> None:
    """Soft RLIMIT_FSIZE only (None lifts it): the result file must still be writable afterwards."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))


def run_scenario(cfg: dict, workdir: Path, threads: int = 2) -> dict:
    import resource

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    os.environ["INFINITETALK_MODELS_DIR"] = cfg["models"]
    os.environ["INFINITETALK_OUTPUT_DIR"] = cfg["output"]
    os.environ["INFINITETALK_TEMP_DIR"] = cfg.get("temp", str(Path(cfg["output"]).parent / "temp"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
    host_mod = hh.sub("nodes.host")
    host_mod.set_host(host_mod.TorchHost())
    progress = open(workdir / "progress.txt", "a", buffering=1)
    faults = Faults(cfg["output"], cfg["fault"]) if cfg.get("fault") else None
    if faults:
        faults.install()
        faults.armed = bool(cfg.get("fault_now"))
    if cfg.get("rlimit_fsize") and not cfg.get("fault_at_decode") and not cfg.get("fault_before_combine"):
        _limit_fsize(cfg["rlimit_fsize"])

    def on_decode(n: int) -> None:
        progress.write(f"decode {n} {time.time()}\n")
        if n == cfg.get("kill_at_decode"):
            os.kill(os.getpid(), signal.SIGKILL)
        if n == cfg.get("fault_at_decode"):
            if faults:
                faults.armed = True
            if cfg.get("rlimit_fsize"):
                _limit_fsize(cfg["rlimit_fsize"])
        if cfg.get("slow_decode"):
            time.sleep(cfg["slow_decode"])

    result: dict = {"pid": os.getpid(), "t_start": time.time()}
    vae = hh.ComfyVAE(on_decode=on_decode)
    try:
        model = hh.load_model()
        tensors = load_file(cfg["features"])
        with safe_open(cfg["features"], "pt") as f:
            fingerprint = (f.metadata() or {}).get("fingerprint")
        feats = hh.make_features([tensors["speaker_1"]], int(tensors["speaker_1"].shape[0]), hh.speech(1.18),
                                 fingerprint=fingerprint)
        nodes = hh.load_pack().NODE_CLASS_MAPPINGS
        refs, _ = nodes["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0,
                                                                   image=hh.reference_image())
        progress.write(f"start {time.time()}\n")
        overrides = cfg.get("inputs", {})
        out = nodes["InfiniteTalkStreamingSampler"]().sample(**hh.sampler_inputs(model, refs, feats, vae,
                                                                                   **overrides))
        digest, count = hh.frames_digest(out[0])
        result.update(ok=True, frames_sha=digest, count=count, job=out[0].path)
        if cfg.get("combine"):
            if cfg.get("fault_before_combine"):
                if faults:
                    faults.armed = True
                if cfg.get("rlimit_fsize"):
                    _limit_fsize(cfg["rlimit_fsize"])
            combined = nodes["InfiniteTalkVideoCombine"]().combine(25.0, cfg.get("prefix", "hostile/talk"), 23,
                                                                   frames=out[0], audio=hh.speech(1.18),
                                                                   job_retention=cfg.get("retention", "keep"))
            result["mp4"] = combined["result"][1]
    except BaseException as exc:  # noqa: BLE001 - the parent judges every outcome
        result.update(ok=False, error=str(exc), error_type=type(exc).__name__,
                      traceback=traceback.format_exc())
    _limit_fsize(None)
    if faults:
        faults.armed = False
    result.update(t_end=time.time(), decodes=vae.decodes, fault_hits=faults.hits if faults else 0)
    return result


def _child_main(cfg: dict, workdir: Path) -> None:
    result = run_scenario(cfg, workdir)
    tmp = workdir / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, workdir / "result.json")


def zygote() -> None:
    import torch  # noqa: F401  (imports only: no torch op runs before a fork)

    hh.load_pack()
    for name in ("nodes.run", "nodes.post", "nodes.audio", "nodes.references", "nodes.loaders",
                 "infinitetalk_core.model.loading", "infinitetalk_core.stream.generate"):
        hh.sub(name)
    import safetensors.torch  # noqa: F401

    if len(sys.argv) > 2:  # warm every code path once (1 thread: no OpenMP pool exists when we fork)
        import tempfile

        torch.set_num_threads(1)
        scratch = Path(tempfile.mkdtemp(prefix="hostile_zygote_"))
        cfg = json.loads(sys.argv[2])
        cfg.update(output=str(scratch / "output"), temp=str(scratch / "temp"))
        saved = dict(os.environ)
        run_scenario(cfg, scratch, threads=1)
        os.environ.clear()
        os.environ.update(saved)
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    children: dict[int, Path] = {}
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    stdin = sys.stdin.fileno()
    buffer = b""
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        if ready:
            data = os.read(stdin, 65536)
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                workdir = Path(request["workdir"])
                pid = os.fork()
                if pid == 0:
                    code = 0
                    try:
                        fd = os.open(workdir / "output.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                        os.dup2(fd, 1)
                        os.dup2(fd, 2)
                        _child_main(request["cfg"], workdir)
                    except BaseException:  # noqa: BLE001
                        traceback.print_exc()
                        code = 70
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)
                children[pid] = workdir
                sys.stdout.write(f"PID {pid}\n")
                sys.stdout.flush()
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            workdir = children.pop(pid, None)
            if workdir is not None:
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                (workdir / "exit.json.tmp").write_text(json.dumps({"status": code}))
                os.replace(workdir / "exit.json.tmp", workdir / "exit.json")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        zygote()
    else:
        scenario = json.loads(Path(sys.argv[1]).read_text())
        _child_main(scenario["cfg"], Path(scenario["workdir"]))
