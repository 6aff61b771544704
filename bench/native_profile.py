"""Where ours and ComfyUI's native WanModel spend a forward (CPU, eager), on bench/native_forward.py's pair.

    COMFYUI_DIR=/path/to/ComfyUI python bench/native_profile.py --threads 1            # torch.profiler by op
    COMFYUI_DIR=/path/to/ComfyUI python bench/native_profile.py --threads 1 --parts 10 # each part alone

``profile_ops`` (torch.profiler, CPU) breaks both eager forwards down by aten op and by labelled part
(module forwards by role, plus the RoPE / attention / modulation helpers each model calls); ``part_times``
replays every part's recorded first call on its own and keeps the fastest, a steadier breakdown on a
loaded machine.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from native_forward import Pair, bench_config, import_native, interleaved_medians, setup  # noqa: E402

from infinitetalk_core.model.config import DiTConfig  # noqa: E402

BLOCK_PARTS = ("self_attn", "cross_attn", "ffn", "norm3")  # same attribute names in both models
MODEL_PARTS = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "img_emb", "head")
ROWS = [  # (row, our label, native's label); "rest" rows are derived
    ("whole forward", "model", "model"),
    ("outside the blocks (rest)", "model-rest", "model-rest"),
    *((f"  {n}", n, n) for n in MODEL_PARTS),
    ("all blocks", "block", "block"),
    ("  block body: norms, modulation, gates, residuals (rest)", "block-rest", "block-rest"),
    ("  modulate (ours) / norm1+norm2 LayerNorm (native)", "fn:modulate", "norm12"),
    ("  gated_add (ours)", "fn:gated_add", None),
    *((f"  {n}", n, n) for n in BLOCK_PARTS),
    ("    q/k RMSNorm (self + cross)", "rmsnorm", "rmsnorm"),
    ("    RoPE rotation (q and k)", "fn:rope", "fn:rope"),
    ("    attention call (3 per block)", "fn:attention", "fn:attention"),
]


def _label(fn: Callable, label: str) -> Callable:
    def labelled(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return labelled


def _labels(pair: Pair, native: bool) -> list[tuple[object, str, str]]:
    """(object, attribute, label) to wrap in record_function: module forwards by role, and the functions
    each model's blocks call (looked up by name, so a renamed helper simply drops out)."""
    model = pair.theirs if native else pair.ours
    spots = [(model, "forward", "model")] + [(getattr(model, n), "forward", n) for n in MODEL_PARTS]
    for block in model.blocks:
        spots += [(block, "forward", "block")] + [(getattr(block, n), "forward", n) for n in BLOCK_PARTS]
        spots += [(m, "forward", "rmsnorm") for a in (block.self_attn, block.cross_attn)
                  for n, m in a.named_children() if n.startswith("norm_")]
        if native:
            spots += [(block.norm1, "forward", "norm12"), (block.norm2, "forward", "norm12")]
    if native:
        return spots + [(pair.wan, "apply_rope1", "fn:rope"), (pair.wan, "optimized_attention", "fn:attention")]
    from infinitetalk_core.model import blocks, rope

    spots += [(blocks, n, f"fn:{n}") for n in ("modulate", "gated_add", "attention") if hasattr(blocks, n)]
    if hasattr(rope, "RopeTables"):  # RopeTables.rotate (the table object's method) or the plain function
        spots.append((rope.RopeTables, "rotate", "fn:rope"))
    elif hasattr(blocks, "rotate_pairs"):
        spots.append((blocks, "rotate_pairs", "fn:rope"))
    return spots


@contextlib.contextmanager
def _wrapped(spots: list[tuple[object, str, str]], wrap: Callable[[Callable, str], Callable]):
    """Replace each ``obj.attr`` by ``wrap(obj.attr, label)`` for the duration; restore them after."""
    patched = []
    try:
        for obj, attr, label in spots:
            patched.append((obj, attr, obj.__dict__.get(attr), attr in obj.__dict__))
            setattr(obj, attr, wrap(getattr(obj, attr), label))
        yield
    finally:
        for obj, attr, original, own in reversed(patched):
            if own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)


def part_times(cfg: DiTConfig, height: int, width: int, frames: int, dtype: torch.dtype = torch.float32,
               threads: int | None = None, repeats: int = 15, comfyui_dir: str | None = None) -> dict:
    """Each labelled part (ROWS) of both models timed alone: one forward records the first call of every
    part (its exact arguments, e.g. block 0's input in the layout that model gives it) and how often it
    runs; then every recorded call is replayed ``repeats`` times, all parts and both models interleaved,
    and its fastest time kept. Short calls (ms) find quiet slices on a loaded machine where whole
    forwards do not, so this is the steadier breakdown. Returns {"parts": {label: [ours, native] ms per
    forward (fastest call × calls per forward)}, "per_call": {label: [ours, native] ms}, "calls": ...}."""
    pair = setup(cfg, height, width, frames, dtype, threads, comfyui_dir)
    recorded: list[dict] = [{}, {}]
    calls: list[dict] = [{}, {}]
    for side, native in ((0, False), (1, True)):
        def record(fn, label, side=side):
            def recording(*args, **kwargs):
                calls[side][label] = calls[side].get(label, 0) + 1
                recorded[side].setdefault(label, (fn, args, kwargs))
                return fn(*args, **kwargs)
            return recording

        model = pair.theirs if native else pair.ours
        pair.call(model, native)()  # warm-up, unrecorded
        with _wrapped(_labels(pair, native), record):
            pair.call(model, native)()

    def replay(fn, args, kwargs):
        def run():
            with torch.inference_mode():
                return fn(*args, **kwargs)
        return run

    fns = {(side, label): replay(*call) for side in (0, 1) for label, call in recorded[side].items()}
    timed = interleaved_medians(fns, 1, repeats)
    per_call: dict = {}
    for (side, label), t in timed.items():
        per_call.setdefault(label, [None, None])[side] = t["min"] * 1e3
    parts = {k: [None if v[i] is None else v[i] * calls[i].get(k, 0) for i in (0, 1)] for k, v in per_call.items()}
    for i in (0, 1):
        get = lambda k: (parts.get(k) or [0.0, 0.0])[i] or 0.0  # noqa: E731
        parts.setdefault("model-rest", [None, None])[i] = get("model") - get("block") - sum(map(get, MODEL_PARTS))
        parts.setdefault("block-rest", [None, None])[i] = get("block") - sum(map(get, BLOCK_PARTS))
    return dict(parts=parts, per_call=per_call, calls=calls,
                config=f"dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, {frames}×{height}×{width}, "
                       f"{str(dtype).removeprefix('torch.')}, cpu {torch.get_num_threads()} threads, fastest of "
                       f"{repeats} replays per part × calls per forward, ms per forward")


def parts_markdown(result: dict) -> str:
    """``part_times`` as a table in ROWS' order."""
    parts, calls = result["parts"], result["calls"]
    cell = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [result["config"], "", "| part | ours ms | native ms | ours − native | calls ours / native |",
             "|---|---|---|---|---|"]
    for row, mine, theirs in ROWS:
        a = (parts.get(mine) or [None, None])[0] if mine else None
        b = (parts.get(theirs) or [None, None])[1] if theirs else None
        n = f"{calls[0].get(mine, '–') if mine else '–'} / {calls[1].get(theirs, '–') if theirs else '–'}"
        diff = None if a is None or b is None else a - b
        lines.append(f"| {row} | {cell(a)} | {cell(b)} | {cell(diff)} | {n} |")
    return "\n".join(lines)


def profile_ops(cfg: DiTConfig, height: int, width: int, frames: int, dtype: torch.dtype = torch.float32,
                threads: int | None = None, forwards: int = 2, comfyui_dir: str | None = None) -> dict:
    """torch.profiler (CPU) of both eager models, ``forwards`` forwards each after one warm-up, interleaved.
    Returns {"ops": {aten op: [ours, native] self-CPU ms per forward}, "counts": {op: [ours, native] calls
    per forward}, "parts": {label: [ours, native] total ms per forward} (ROWS' labels), "config": ...};
    every time is the median over the ``forwards`` profiled forwards."""
    from torch.profiler import ProfilerActivity, profile

    pair = setup(cfg, height, width, frames, dtype, threads, comfyui_dir)
    runs: list[list[dict]] = [[], []]  # per side, per forward: {key: ms}
    calls: dict = {}
    for native in (False, True):
        pair.call(pair.theirs if native else pair.ours, native)()  # warm-up
    for _ in range(forwards):
        for side, native in ((0, False), (1, True)):
            with _wrapped(_labels(pair, native), _label), profile(activities=[ProfilerActivity.CPU]) as prof:
                pair.call(pair.theirs if native else pair.ours, native)()
            one: dict = {}
            for evt in prof.key_averages():
                if evt.key.startswith("aten::"):
                    one[evt.key] = evt.self_cpu_time_total / 1e3
                    calls.setdefault(evt.key, [0, 0])[side] = evt.count
                elif not evt.key.startswith(("ProfilerStep", "<")):
                    one["part:" + evt.key] = evt.cpu_time_total / 1e3
            get = lambda k: one.get("part:" + k, 0.0)  # noqa: E731
            one["part:model-rest"] = get("model") - get("block") - sum(map(get, MODEL_PARTS))
            one["part:block-rest"] = get("block") - sum(map(get, BLOCK_PARTS))
            runs[side].append(one)
    # the median over forwards of each entry: other load on a shared machine hits single forwards
    keys = {k for side in runs for one in side for k in one}
    med = {k: [statistics.median(one.get(k, 0.0) for one in runs[side]) for side in (0, 1)] for k in keys}
    ops = {k: v for k, v in med.items() if k.startswith("aten::")}
    parts = {k.removeprefix("part:"): v for k, v in med.items() if k.startswith("part:")}
    counts = calls
    return dict(ops=ops, counts=counts, parts=parts,
                config=f"dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, {frames}×{height}×{width}, "
                       f"{str(dtype).removeprefix('torch.')}, cpu {torch.get_num_threads()} threads, "
                       f"profiled ms per forward (median of {forwards})")


def profile_markdown(result: dict, top: int = 20) -> str:
    """Two tables: the labelled parts (ROWS) and the aten ops with the largest |ours − native| self time."""
    parts = result["parts"]
    lines = [result["config"], "", "| part (total CPU ms per forward) | ours | native | ours − native |",
             "|---|---|---|---|"]
    for row, mine, theirs in ROWS:
        a = parts.get(mine, [0.0, 0.0])[0] if mine else None
        b = parts.get(theirs, [0.0, 0.0])[1] if theirs else None
        cell = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {row} | {cell(a)} | {cell(b)} | {cell(None if a is None or b is None else a - b)} |")
    lines += ["", "| aten op (self CPU ms per forward) | ours | native | ours − native | calls ours / native |",
              "|---|---|---|---|---|"]
    ranked = sorted(result["ops"].items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:top]
    for op, (a, b) in ranked:
        c = result["counts"][op]
        lines.append(f"| {op} | {a:.1f} | {b:.1f} | {a - b:+.1f} | {c[0]:.0f} / {c[1]:.0f} |")
    total = [sum(v[i] for v in result["ops"].values()) for i in (0, 1)]
    lines.append(f"| all aten ops | {total[0]:.1f} | {total[1]:.1f} | {total[0] - total[1]:+.1f} | |")
    return "\n".join(lines)


__all__ = ["part_times", "parts_markdown", "profile_markdown", "profile_ops"]


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Profile ours vs ComfyUI's native WanModel by op (CPU, eager); "
                                            "timing: bench/dit_forward.py --vs-native")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    for name, default in (("--height", 128), ("--width", 128), ("--frames", 21)):
        p.add_argument(name, type=int, default=default)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--forwards", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--parts", type=int, metavar="REPEATS",
                   help="instead of the profile: replay every labelled part REPEATS times, fastest kept "
                        "(part_times)")
    a = p.parse_args(argv)
    reason = import_native()
    if isinstance(reason, str):
        sys.exit(reason)
    cfg, dtype = bench_config(a.dim, a.layers, a.heads), getattr(torch, a.dtype)
    if a.parts:
        return print(parts_markdown(part_times(cfg, a.height, a.width, a.frames, dtype, a.threads, a.parts)))
    print(profile_markdown(profile_ops(cfg, a.height, a.width, a.frames, dtype, a.threads, a.forwards), a.top))


if __name__ == "__main__":
    main()
