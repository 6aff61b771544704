"""ComfyUI's weight casting for our fp8-kept layers: ``comfy.ops.cast_bias_weight`` behind the core's
``fp8.set_weight_cast`` hook (offload streams, cast buffers, use-time LoRA patches), across the
signatures ComfyUI has had."""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def comfy_fp8_cast(ops) -> Any:
    """The core's fp8 weight-cast hook (``fp8.set_weight_cast``) over ``ops.cast_bias_weight``, or None when
    this ComfyUI's cast cannot keep a dtype of our choosing (a cast without ``dtype``: very old ComfyUI).

    The weight is asked for in the dtype the layer names (its fp8 dtype: ComfyUI moves the fp8 bytes,
    through its offload stream and cast buffers when the layer is offloaded, and dequantises nothing;
    float32 when the layer has weight_function patches, which ComfyUI then applies). Versions differ:
    ``offloadable=True`` (newer) returns a third value to hand back to ``uncast_bias_weight`` after the
    last use; ``compute_dtype`` / ``want_requant`` (newest, dynamic VRAM) let ComfyUI apply its own
    low-VRAM patches in float32 and, on the fp8 path, re-quantise the patched weight to fp8.
    ``ops.cast_bias_weight`` is looked up at each call (it may be wrapped after start-up).
    """
    params = inspect.signature(ops.cast_bias_weight).parameters
    if "dtype" not in params or "bias_dtype" not in params:
        return None
    offloadable = "offloadable" in params and hasattr(ops, "uncast_bias_weight")
    requant = "compute_dtype" in params and "want_requant" in params

    def cast(module, x, weight_dtype, bias_dtype, keep_fp8):
        kwargs = {"dtype": weight_dtype, "device": x.device, "bias_dtype": bias_dtype}
        if requant:
            kwargs.update(compute_dtype=torch.float32, want_requant=keep_fp8)
        if not offloadable:
            weight, bias = ops.cast_bias_weight(module, x, **kwargs)
            return weight, bias, None
        weight, bias, stream = ops.cast_bias_weight(module, x, offloadable=True, **kwargs)
        return weight, bias, lambda: ops.uncast_bias_weight(module, weight, bias, stream)

    return cast


def install_fp8_cast(ops) -> bool:
    """Make fp8-kept layers built on ``ops.CastWeightBiasOp`` cast through ComfyUI (idempotent).

    Returns whether the hook is installed (False: this ComfyUI is too old; the layers move their own
    fp8 bytes as outside ComfyUI).
    """
    from ..infinitetalk_core.model import fp8

    layer_base = getattr(ops, "CastWeightBiasOp", None)
    if layer_base is None:
        return False
    current = fp8.weight_cast_for_base(layer_base)
    if getattr(current, "comfy_ops", None) is ops:
        return True
    cast = comfy_fp8_cast(ops)
    if cast is not None:
        cast.comfy_ops = ops
    fp8.set_weight_cast(layer_base, cast)
    if cast is None:
        log.info("fp8 weights: this ComfyUI's cast_bias_weight takes no dtype; the layers move their bytes")
    return cast is not None


__all__ = ["comfy_fp8_cast", "install_fp8_cast"]
