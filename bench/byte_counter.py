"""Bytes moved by the non-matmul work of one DiT block: a machine-independent speed counter.

Elementwise ops (norms, modulation, RoPE, residual adds, casts, activations) are memory bound: on a GPU
their time is bytes / bandwidth. ``count_block_bytes`` runs one transformer block on the ``meta`` device
(shapes only, no memory, instant even at the real 14B width and 32,760 tokens of a 480×832×81 chunk)
under a TorchDispatchMode that adds, for every aten op that is not a matmul, attention or convolution,
the bytes of its tensor inputs and outputs. Views (outputs that alias an input, per the op's schema) and
allocations cost nothing; in-place ops count their inputs once; casts count as copies. The result is
divided by tokens × width: bytes per token·dim per block.

    python bench/dit_forward.py --count-bytes     # ours, and ComfyUI's native WanModel with COMFYUI_DIR
"""
from __future__ import annotations

import collections
import dataclasses
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SKIPPED = {"scaled_dot_product_attention", "mm", "addmm", "bmm", "baddbmm", "linear", "convolution",
           "_scaled_mm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
           "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"}
ALLOCATIONS = {"empty", "empty_like", "new_empty", "zeros_like", "empty_strided"}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class NonMatmulBytes(TorchDispatchMode):
    """Adds up the bytes every non-matmul aten op reads and writes; ``by_op`` breaks them down."""

    def __init__(self):
        super().__init__()
        self.by_op: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._overloadpacket.__name__
        if name in SKIPPED or name in ALLOCATIONS:
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        written = (kwargs or {}).get("out")
        if written is not None:  # an .out overload reads its inputs and writes `out`
            self.by_op[name] += _nbytes([t for t in ins if t is not written]) + _nbytes([written])
            return out
        aliased = [r.alias_info is not None for r in func._schema.returns]
        cast = name == "to" and outs and ins and outs[0].dtype != ins[0].dtype
        if aliased and all(aliased) and not name.endswith("_") and not cast:
            return out  # a view
        self.by_op[name] += _nbytes(ins) + (0 if name.endswith("_") else _nbytes(outs))
        return out

    @property
    def total(self) -> int:
        return sum(self.by_op.values())


def count_block_bytes(block: torch.nn.Module, run, tokens: int, dim: int) -> tuple[float, dict[str, float]]:
    """Call ``run()`` (a forward that calls ``block`` once) and count only inside ``block``.

    Returns (bytes per token·dim, {op: bytes per token·dim}).
    """
    counter, inner = NonMatmulBytes(), block.forward

    def counted(*args, **kwargs):
        with counter:
            return inner(*args, **kwargs)

    block.forward = counted
    try:
        with torch.inference_mode():
            run()
    finally:
        del block.forward  # the instance attribute; the class method is back
    scale = tokens * dim
    return counter.total / scale, {k: v / scale for k, v in counter.by_op.most_common()}


def ours(config, inputs_fn, height: int, width: int, frames: int) -> tuple[float, dict[str, float]]:
    """Our InfiniteTalkDiT block (bf16, meta device) at the config's width."""
    from infinitetalk_core.model.dit import InfiniteTalkDiT

    cfg = dataclasses.replace(config, num_layers=1)
    model = InfiniteTalkDiT(cfg, device="meta", dtype=torch.bfloat16).eval()
    inp = inputs_fn(cfg, height, width, frames, 1, 1, torch.device("meta"), torch.bfloat16)
    names = ("x", "t", "context", "clip_fea", "y", "audio", "ref_target_masks")
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    return count_block_bytes(model.blocks[0], lambda: model(*(inp[n] for n in names)), tokens, cfg.dim)


def ours_with_host_rope(config, inputs_fn, height: int, width: int, frames: int):
    """Our block as it runs inside ComfyUI: RoPE through comfy-kitchen's fused kernel (a reason if absent)."""
    try:
        import comfy_kitchen
    except Exception as exc:  # outside ComfyUI's environment
        return f"comfy-kitchen not importable ({type(exc).__name__}); run with ComfyUI's python"
    from infinitetalk_core.model.rope import set_fused_rope

    set_fused_rope(comfy_kitchen.apply_rope1, devices=("meta",))
    try:
        return ours(config, inputs_fn, height, width, frames)
    finally:
        set_fused_rope(None)


def native(config, height: int, width: int, frames: int) -> tuple[float, dict[str, float]] | str:
    """ComfyUI's native Wan2.1 I2V block under the same counter (needs COMFYUI_DIR); a reason otherwise."""
    root = os.environ.get("COMFYUI_DIR")
    if not root:
        return "set COMFYUI_DIR to count ComfyUI's native WanModel"
    sys.path.insert(0, root)
    try:
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True  # else comfy.model_management asserts CUDA at import
        comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA, as ours (not sub-quadratic)
        import comfy.ldm.wan.model as wan
        import comfy.ops
    except Exception as exc:  # a ComfyUI that does not import here
        return f"ComfyUI's WanModel did not import ({type(exc).__name__}: {exc})"
    c = config
    model = wan.WanModel(model_type="i2v", in_dim=36, dim=c.dim, ffn_dim=c.ffn_dim, text_dim=c.text_dim,
                         num_heads=c.num_heads, num_layers=1, device="meta", dtype=torch.bfloat16,
                         operations=comfy.ops.disable_weight_init).eval()
    grid = ((frames - 1) // 4 + 1, height // 8, width // 8)
    x = torch.zeros(1, 16, *grid, device="meta", dtype=torch.bfloat16)
    y = torch.zeros(1, 20, *grid, device="meta", dtype=torch.bfloat16)
    context = torch.zeros(1, 512, c.text_dim, device="meta", dtype=torch.bfloat16)
    clip = torch.zeros(1, 257, c.clip_dim, device="meta", dtype=torch.bfloat16)
    t = torch.zeros(1, device="meta", dtype=torch.bfloat16)
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    run = lambda: model(torch.cat([x, y], 1), t, context, clip_fea=clip)  # noqa: E731
    return count_block_bytes(model.blocks[0], run, tokens, c.dim)


__all__ = ["NonMatmulBytes", "count_block_bytes", "native", "ours", "ours_with_host_rope"]
