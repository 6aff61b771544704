"""Our InfiniteTalkDiT against ComfyUI's native WanModel: same weights, same inputs, forward time ratio.

``compare`` builds our DiT (``audio=None``: a plain Wan2.1 I2V DiT) with random weights, loads its
``state_dict()`` into ``comfy.ldm.wan.model.WanModel`` (reporting missing / unexpected keys, which must
both be 0), feeds both the same x, t, context, clip_fea and y (each in the layout it expects), checks the
largest absolute output difference and times ``repeats`` forwards after ``warmup`` of ours eager, native
eager and, with ``compile=True``, both with every block compiled the same regional way (``compile_blocks``
for ours, ``block.compile`` for native's). The timing runs are interleaved (ours, native, ours-compiled,
native-compiled, then the reverse order, ...) so machine noise hits all alike; it reports the median, the
minimum and the median of the uncontended calls (other processes' CPU use read from /proc). On a small
shared machine, ``--threads 1`` gives far steadier ratios than 2 threads (no barrier waits on a
descheduled peer thread). Needs a ComfyUI checkout at ``$COMFYUI_DIR``; the helpers that build configs,
weights and inputs do not.

    COMFYUI_DIR=/path/to/ComfyUI python bench/dit_forward.py --vs-native --dim 1024 --layers 6 \\
        --height 128 --width 128 --frames 21 --dtype bfloat16 --threads 2 --compile blocks

Where the time goes, op by op and part by part: ``bench/native_profile.py``.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/dit_forward.py (random_inputs)
from infinitetalk_core.model.compile import compile_blocks  # noqa: E402
from infinitetalk_core.model.config import DiTConfig  # noqa: E402
from infinitetalk_core.model.dit import InfiniteTalkDiT  # noqa: E402

NATIVE_CLIP_DIM = 1280  # WanModel's MLPProj hard-codes ViT-H/14's width
OUR_ARGS = ("x", "t", "context", "clip_fea", "y")


def bench_config(dim: int = 1024, layers: int = 6, heads: int = 8, ffn_mult: int = 4) -> DiTConfig:
    """A Wan2.1 I2V DiT without audio, narrower and shallower than 14B (text_dim and clip_dim stay real)."""
    return DiTConfig(dim=dim, ffn_dim=ffn_mult * dim, num_layers=layers, num_heads=heads, audio=None)


def check_config(cfg: DiTConfig) -> None:
    """Raise ValueError for a config the native WanModel cannot represent."""
    if cfg.audio is not None:
        raise ValueError("the native comparison needs a DiTConfig with audio=None (native has no audio)")
    if cfg.clip_dim != NATIVE_CLIP_DIM:
        raise ValueError(f"native WanModel's img_emb takes {NATIVE_CLIP_DIM}-wide CLIP tokens, got {cfg.clip_dim}")


def native_kwargs(cfg: DiTConfig) -> dict:
    """WanModel(...) keyword arguments for the same architecture as ``cfg`` (I2V, qk-norm, norm3)."""
    check_config(cfg)
    return dict(model_type="i2v", patch_size=tuple(cfg.patch_size), text_len=cfg.text_len, in_dim=cfg.in_dim,
                dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim,
                out_dim=cfg.out_dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, qk_norm=True,
                cross_attn_norm=True, eps=cfg.eps)


def build_ours(cfg: DiTConfig, dtype: torch.dtype, seed: int = 0) -> InfiniteTalkDiT:
    """Our DiT with random weights; norm weights and biases get noise too, so a mis-mapped key shows up."""
    torch.manual_seed(seed)
    model = InfiniteTalkDiT(cfg, device="cpu", dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


def native_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict as native expects it: WanModel keeps patch_embedding in float32 (its forward casts x
    to float32 for it), everything else as given."""
    return {k: v.float() if k.startswith("patch_embedding.") else v for k, v in state.items()}


def native_inputs(inp: dict, cfg: DiTConfig, dtype: torch.dtype) -> dict:
    """Our inputs (``random_inputs`` layout: x, t, context list, clip_fea, y) in native's calling layout:
    x = [x | y] along channels (what ComfyUI's WAN21 model_base concatenates), context zero-padded to
    text_len and stacked, everything in the model dtype (ComfyUI casts inputs to it)."""
    batch = inp["x"].shape[0]
    y = inp["y"].expand(batch, *inp["y"].shape[1:])
    context = inp["context"]
    items = list(context) if not torch.is_tensor(context) else list(context.unbind(0))
    padded = torch.stack([F.pad(c, (0, 0, 0, cfg.text_len - c.shape[0])) for c in items])
    return dict(x=torch.cat([inp["x"], y], 1).to(dtype), timestep=inp["t"].to(dtype), context=padded.to(dtype),
                clip_fea=inp["clip_fea"].expand(batch, *inp["clip_fea"].shape[1:]).to(dtype))


def share_weights(make: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A second instance of ``make()`` (built on ``meta``) whose parameters are the very tensors of
    ``state``: the compiled copy costs no extra memory and stays identical to the eager one."""
    with torch.device("meta"):
        twin = make()
    missing, unexpected = twin.load_state_dict(state, strict=True, assign=True)
    assert not missing and not unexpected
    return twin.eval()


def machine_snapshot() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, this process's jiffies) from /proc, or None off Linux."""
    try:
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    busy = sum(int(v) for v in cpu[:8]) - int(cpu[3]) - int(cpu[4])  # all but idle and iowait
    return busy, int(own[11]) + int(own[12])  # utime + stime (fields 14, 15)


QUIET = 0.10  # "quiet": other processes used at most the CPUs we leave free, plus 10 % of the machine


def interleaved_medians(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                        clock: Callable[[], float] = time.perf_counter,
                        snapshot: Callable[[], tuple[int, int] | None] = machine_snapshot,
                        threads: int | None = None) -> dict[str, dict]:
    """Run ``fns`` round-robin, reversing the order every round (A B C, C B A, ...) so drift and
    noise spread evenly. The first ``warmup`` rounds are untimed. Returns {name: {median, min, times,
    other, quiet_median, quiet}} in seconds: ``other`` is the share of the machine's CPUs that other
    processes used during each call (from /proc; None where unknown), ``quiet_median`` the median of the
    calls where that share stayed within the CPUs our ``threads`` (default: torch's) leave free plus QUIET
    (None if none did), ``quiet`` their number; /proc counts in jiffies (1/CLK_TCK s), so the share is
    coarse for calls under ~0.1 s. On a shared machine other load only adds time: the quiet median (else
    the minimum) is the estimate to trust."""
    hz, cpus = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, os.cpu_count() or 1
    limit = max(cpus - (threads or torch.get_num_threads()), 0) / cpus + QUIET
    names = list(fns)
    times: dict = {n: [] for n in names}
    other: dict = {n: [] for n in names}
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else reversed(names):
            before, start = snapshot(), clock()
            fns[name]()
            wall, after = clock() - start, snapshot()
            if r >= warmup:
                times[name].append(wall)
                share = None
                if before is not None and after is not None and wall > 0:
                    foreign = (after[0] - before[0]) - (after[1] - before[1])
                    share = max(foreign, 0) / (wall * hz * cpus)
                other[name].append(share)
    out = {}
    for n in names:
        quiet = [t for t, o in zip(times[n], other[n]) if o is not None and o < limit]
        out[n] = {"median": statistics.median(times[n]), "min": min(times[n]), "times": times[n], "other": other[n],
                  "quiet": len(quiet), "quiet_median": statistics.median(quiet) if quiet else None}
    return out


def import_native(root: str | None = None):
    """(comfy.ldm.wan.model, comfy.ops) from ``root`` or $COMFYUI_DIR on the CPU, or a reason string."""
    root = root or os.environ.get("COMFYUI_DIR")
    if not root:
        return "COMFYUI_DIR is not set: point it at a ComfyUI checkout to compare against its native WanModel"
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True  # else comfy.model_management asserts CUDA at import
        comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA, as ours
        import comfy.ldm.wan.model as wan
        import comfy.ops
    except Exception as exc:  # a ComfyUI that does not import here
        return f"ComfyUI's WanModel did not import from {root} ({type(exc).__name__}: {exc})"
    return wan, comfy.ops


class Pair:
    """Both models on the same weights, and their inputs (``setup``). A plain class, not a dataclass: the
    tests load this file by path, without a sys.modules entry."""

    def __init__(self, cfg: DiTConfig, dtype: torch.dtype, wan, ours: torch.nn.Module, theirs: torch.nn.Module,
                 make_native: Callable[[], torch.nn.Module], missing: list, unexpected: list, inputs: dict,
                 native_inputs: dict):
        self.cfg, self.dtype, self.wan, self.ours, self.theirs = cfg, dtype, wan, ours, theirs
        self.make_native, self.missing, self.unexpected = make_native, missing, unexpected
        self.inputs, self.native_inputs = inputs, native_inputs

    def call(self, model: torch.nn.Module, native: bool, **extra) -> Callable[[], torch.Tensor]:
        """A no-argument forward of ``model`` (ours or native's calling convention) under inference_mode;
        ``extra``: more keyword arguments for ours."""
        def run():
            with torch.inference_mode():
                if native:
                    return model(**self.native_inputs, transformer_options={})
                return model(*(self.inputs[n] for n in OUR_ARGS), **extra)
        return run


def condition_cache():
    """A fresh ``ConditionCache`` when our DiT's forward takes one (the sampler's per-chunk memo of the
    text / CLIP embeddings: what ours does at every step after the first), else None."""
    import inspect

    try:
        from infinitetalk_core.model.condition_cache import ConditionCache
    except ImportError:
        return None
    return ConditionCache() if "condition_cache" in inspect.signature(InfiniteTalkDiT.forward).parameters else None


def setup(cfg: DiTConfig, height: int, width: int, frames: int, dtype: torch.dtype = torch.float32,
          threads: int | None = None, comfyui_dir: str | None = None) -> Pair:
    """Our DiT with random weights, native WanModel loaded from its state dict, inputs for both."""
    from dit_forward import random_inputs

    native = import_native(comfyui_dir)
    if isinstance(native, str):
        raise RuntimeError(native)
    wan, ops = native
    if threads:
        torch.set_num_threads(threads)
    check_config(cfg)
    ours = build_ours(cfg, dtype)
    kw = native_kwargs(cfg)
    make_native = lambda: wan.WanModel(**kw, dtype=dtype, operations=ops.disable_weight_init)  # noqa: E731
    with torch.device("cpu"):
        theirs = make_native().eval()
    missing, unexpected = theirs.load_state_dict(native_state_dict(ours.state_dict()), strict=False)
    torch.manual_seed(1)
    inp = random_inputs(cfg, height, width, frames, 1, 1, torch.device("cpu"), dtype)
    return Pair(cfg, dtype, wan, ours, theirs, make_native, list(missing), list(unexpected), inp,
                native_inputs(inp, cfg, dtype))


def compare(cfg: DiTConfig, height: int, width: int, frames: int, dtype: torch.dtype = torch.float32,
            threads: int | None = None, warmup: int = 2, repeats: int = 5, compile: bool = False,
            compile_native: bool = True, comfyui_dir: str | None = None, cached: bool = True) -> dict:
    """Build, load, check and time both models (see the module docstring); ``cached`` adds ours with a
    ConditionCache kept across the calls, as the sampler runs it within a chunk. Returns a dict with keys
    config, missing, unexpected, max_abs_diff, out_max_abs, seconds {variant: median}, min_seconds,
    quiet_seconds (median of the calls without other load, or None), quiet_runs, times, other_load,
    ratios {label: (ratio of medians, of minima, of quiet medians or None)}."""
    pair = setup(cfg, height, width, frames, dtype, threads, comfyui_dir)
    ours, theirs, missing, unexpected, run = pair.ours, pair.theirs, pair.missing, pair.unexpected, pair.call
    state = ours.state_dict()
    fns = {"ours eager": run(ours, False), "native eager": run(theirs, True)}
    memo = condition_cache() if cached else None
    if memo is not None:
        fns["ours eager + ConditionCache"] = run(ours, False, condition_cache=memo)
    if compile:
        ours_c = share_weights(lambda: InfiniteTalkDiT(cfg, dtype=dtype), state)
        compile_blocks(ours_c, "blocks")
        fns["ours compiled"] = run(ours_c, False)
        if compile_native:
            theirs_c = share_weights(pair.make_native, theirs.state_dict())
            for block in theirs_c.blocks:
                block.compile(backend="inductor", dynamic=False)
            fns["native compiled"] = run(theirs_c, True)
    outputs = {name: fn().float() for name, fn in fns.items()}  # also the first (compiling) call
    ref = outputs["native eager"]
    timed = interleaved_medians(fns, max(warmup - 1, 0), repeats)
    seconds = {n: t["median"] for n, t in timed.items()}
    fastest = {n: t["min"] for n, t in timed.items()}
    quiet = {n: t["quiet_median"] for n, t in timed.items()}
    pairs = [("ours/native eager", "ours eager", "native eager"),
             ("ours + ConditionCache/native eager", "ours eager + ConditionCache", "native eager"),
             ("ours compiled/native eager", "ours compiled", "native eager"),
             ("ours compiled/native compiled", "ours compiled", "native compiled"),
             ("native compiled/native eager", "native compiled", "native eager")]
    ratios = {label: (seconds[a] / seconds[b], fastest[a] / fastest[b],
                      quiet[a] / quiet[b] if quiet[a] and quiet[b] else None)
              for label, a, b in pairs if a in seconds and b in seconds}
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    return dict(
        config=dict(dim=cfg.dim, ffn_dim=cfg.ffn_dim, layers=cfg.num_layers, heads=cfg.num_heads,
                    video=f"{frames}×{height}×{width}", tokens=tokens, dtype=str(dtype).removeprefix("torch."),
                    threads=torch.get_num_threads()),
        missing=list(missing), unexpected=list(unexpected),
        max_abs_diff={n: (o - ref).abs().max().item() for n, o in outputs.items() if n != "native eager"},
        out_max_abs=ref.abs().max().item(),
        seconds=seconds, min_seconds=fastest, quiet_seconds=quiet,
        quiet_runs={n: t["quiet"] for n, t in timed.items()}, times={n: t["times"] for n, t in timed.items()},
        other_load={n: t["other"] for n, t in timed.items()},
        ratios=ratios,
    )


def markdown(result: dict) -> str:
    """The result of ``compare`` as markdown tables."""
    c = result["config"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"dim {c['dim']}, ffn {c['ffn_dim']}, {c['layers']} layers, {c['heads']} heads, {c['video']} "
             f"({c['tokens']} tokens), {c['dtype']}, cpu {c['threads']} threads; "
             f"keys loaded into native: {len(result['missing'])} missing, {len(result['unexpected'])} unexpected",
             "", "| variant | median s | min s | quiet median s (runs without contention) | "
                 "all s (other processes' CPU share) | max abs diff vs native eager |", "|---|---|---|---|---|---|"]
    for name, s in result["seconds"].items():
        diff = result["max_abs_diff"].get(name)
        shown = "–" if diff is None else f"{diff:.2e} (output max {result['out_max_abs']:.2f})"
        runs = " ".join(f"{t:.3f}" + ("" if o is None else f" ({o:.0%})")
                        for t, o in zip(result["times"][name], result["other_load"][name]))
        quiet = f"{fmt(result['quiet_seconds'][name])} ({result['quiet_runs'][name]})"
        lines.append(f"| {name} | {s:.3f} | {result['min_seconds'][name]:.3f} | {quiet} | {runs} | {shown} |")
    lines += ["", "| ratio | of medians | of minima | of quiet medians |", "|---|---|---|---|"]
    lines += [f"| {k} | {med:.3f} | {low:.3f} | {fmt(q)} |" for k, (med, low, q) in result["ratios"].items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- profile


__all__ = ["Pair", "bench_config", "build_ours", "check_config", "compare", "condition_cache", "import_native",
           "interleaved_medians", "machine_snapshot", "markdown", "native_inputs", "native_kwargs",
           "native_state_dict", "setup", "share_weights"]
