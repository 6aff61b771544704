"""GGUF-quantized Linear layers: the block bytes stay in memory, each call dequantizes on x's device.

The pattern is fp8.py's ``keep`` mode: ``gguf_operations(ops)`` swaps ``ops.Linear`` for a subclass whose
``weight`` may be a GGUF tensor's raw bytes (a uint8 Parameter [out, bytes per row]) with its GGML type
(``gguf_type``) and logical shape (``gguf_shape``) beside it. ``forward`` moves the compact bytes to
the activation's device, dequantizes there (``gguf_quants.dequantize``, float32 math, one rounding to
the activation dtype) and calls ``F.linear``. Layers whose weight is a plain tensor behave exactly like
``base``. The Wan2.1 I2V 14B DiT so takes about 10.9 GB as Q4_K_M (9.9 GB Q4_K_S, 17.7 GB Q8_0) instead
of 32.8 GB in bf16; each call briefly holds one dequantized weight in float32 (at most 5120 x 13824,
283 MB, for the 14B model) plus its copy in the activation dtype.

LoRA: a GGUF weight cannot take a delta in place (it would have to be re-quantized), so patches are
kept on the layer (``gguf_patches``: (LoraPatch, strength) pairs) and added in float32 to the
dequantized weight at every call, before the host's ``weight_function`` patches. ``merge_lora`` does this
for GGUF layers; ``split_gguf_patches`` hands a host only the patches of plain weights.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F

from .gguf_quants import BLOCK_SIZES, dequantize

if TYPE_CHECKING:
    from .lora import LoraPatch, LoraPatchSet


def _gguf_weight(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The layer's dequantized weight on ``device`` in ``dtype``, with its use-time patches added."""
    raw = module.weight.to(device, non_blocking=True)  # the compact bytes travel, not the floats
    patches, host_fns = module.gguf_patches, getattr(module, "weight_function", ())
    if not patches and not host_fns:
        return dequantize(raw, module.gguf_type, module.gguf_shape, dtype)
    weight = dequantize(raw, module.gguf_type, module.gguf_shape, torch.float32)
    for patch, strength in patches:
        weight.add_(patch.delta(weight.shape, device=device), alpha=strength)
    for fn in host_fns:  # e.g. ComfyUI low-VRAM patches, on the values the layer really uses
        weight = fn(weight)
    return weight.to(dtype)


def _gguf_linear_class(base: type) -> type:
    class GGUFLinear(base):
        """``base`` Linear whose weight may be GGUF block bytes (``gguf_type`` set), dequantized per call."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.gguf_type: str | None = None
            self.gguf_shape: tuple[int, ...] | None = None
            self.gguf_patches: list[tuple[Any, float]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.gguf_type is None:
                return super().forward(x)
            bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
            for fn in getattr(self, "bias_function", ()) if bias is not None else ():
                bias = fn(bias)
            return F.linear(x, _gguf_weight(self, x.device, x.dtype), bias)

    GGUFLinear.__name__ = f"GGUF{base.__name__}"
    return GGUFLinear


class GGUFOperations:
    """``operations`` with ``Linear`` replaced by a GGUFLinear subclass; other names pass through.

    Wraps any namespace, an ``Fp8Operations`` included (a GGUF base with fp8-kept audio weights).
    """

    def __init__(self, operations):
        self.base = operations
        self.Linear = _gguf_linear_class(operations.Linear)

    def __getattr__(self, name: str):
        return getattr(self.base, name)


def gguf_operations(operations=torch.nn) -> GGUFOperations:
    """An ``operations`` namespace (default torch.nn) whose ``Linear`` can hold GGUF-quantized weights."""
    return operations if isinstance(operations, GGUFOperations) else GGUFOperations(operations)


def can_hold_gguf(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a GGUFLinear (built through ``gguf_operations``)."""
    return hasattr(module, "gguf_patches")


def is_gguf_layer(module: torch.nn.Module) -> bool:
    """Whether ``module`` currently holds a GGUF-quantized weight."""
    return getattr(module, "gguf_type", None) is not None


def assign_gguf_weight(
    module: torch.nn.Module, raw: torch.Tensor, qtype: str, shape: tuple[int, ...]
) -> None:
    """Give a GGUFLinear the raw bytes (uint8, already on the target device) of a ``qtype`` weight.

    Stored as [out_features, bytes per row] so the parameter's first dim still counts output rows.
    """
    if not can_hold_gguf(module):
        raise TypeError(
            f"{type(module).__name__} cannot hold GGUF weights; build the model with gguf_operations()"
        )
    if qtype not in BLOCK_SIZES:
        raise ValueError(f"GGUF type {qtype} is not a block type this layer dequantizes")
    rows = int(shape[0])
    raw = raw.reshape(rows, -1) if raw.numel() % rows == 0 else raw.reshape(-1)
    module.weight = torch.nn.Parameter(raw, requires_grad=False)
    module.gguf_type, module.gguf_shape = qtype, tuple(int(d) for d in shape)


def gguf_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, module) of every layer of ``model`` that holds a GGUF-quantized weight."""
    return ((name, m) for name, m in model.named_modules() if is_gguf_layer(m))


def logical_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape, with GGUF weights at their logical shape (for LoRA shape checks)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes.update({f"{name}.weight": m.gguf_shape for name, m in gguf_layers(model)})
    return shapes


def storage_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` as stored (GGUF weights at their block size)."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b is not None)]
    return sum(t.numel() * t.element_size() for t in tensors)


def add_gguf_patch(module: torch.nn.Module, patch: LoraPatch, strength: float) -> None:
    """Add a LoRA patch to a GGUF layer's weight, applied at every call (the bytes stay as they are)."""
    module.gguf_patches.append((patch, float(strength)))


def _is_gguf_weight(model: torch.nn.Module, key: str) -> bool:
    module_name, _, attr = key.rpartition(".")
    return attr == "weight" and is_gguf_layer(model.get_submodule(module_name))


def split_gguf_patches(model: torch.nn.Module, lora: LoraPatchSet, strength: float) -> LoraPatchSet:
    """Attach ``lora``'s patches of GGUF weights to their layers; return the patches of the other weights.

    For hosts that patch weights themselves (ComfyUI's ModelPatcher adds deltas to the stored values,
    which for GGUF bytes would be meaningless): they get the returned set, the layers do the rest.
    """
    rest = []
    for patch in lora.patches:
        if _is_gguf_weight(model, patch.key):
            add_gguf_patch(model.get_submodule(patch.key.rpartition(".")[0]), patch, strength)
        else:
            rest.append(patch)
    return dataclasses.replace(lora, patches=tuple(rest))
