"""fp8 "scaled" weights: dequantise on load, or keep fp8 storage and dequantise per matmul.

A scaled fp8 file stores ``W ≈ weight_fp8 · scale`` per Linear (one fp32 scale per tensor, sometimes one
per output row). Two ways to use it, chosen by the loader's ``fp8_mode``:

- ``"dequantize"`` (default): ``W`` is rebuilt once at load time in the target dtype. Same speed and
  memory as a bf16 file; simplest and exactly the numbers the file encodes.
- ``"keep"``: the fp8 bytes stay as the parameter (half the memory of bf16) and ``ScaledFp8Linear``
  rebuilds ``W`` for each call. Both modes use ``dequantize_fp8`` so they give identical outputs.

Dequantisation multiplies in float32 and rounds once to the target dtype (fp8 -> fp32 is exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_TORCH_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
QUANT_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
FP8_MODES = ("dequantize", "keep")


def is_fp8(t: torch.Tensor) -> bool:
    return t.dtype in FP8_TORCH_DTYPES


def _broadcast_scale(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A per-tensor scale (0-d or [1]) as is; a per-row scale ([out] or [out, 1]) as [out, 1, ...]."""
    scale = scale.to(device=weight.device, dtype=torch.float32)
    if scale.numel() == 1:
        return scale.reshape(())
    return scale.reshape(weight.shape[0], *([1] * (weight.dim() - 1)))


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` [out, in] fp8 (or any dtype) times ``scale`` -> ``dtype``, multiplied in float32."""
    w = weight.to(torch.float32)
    if scale is not None:
        w = w * _broadcast_scale(scale, w)
    return w.to(dtype)


def _scaled_linear_class(base: type) -> type:
    class ScaledFp8Linear(base):
        """``base`` Linear whose weight may be fp8 with a ``scale_weight`` buffer (not in the state dict)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("scale_weight", None, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not is_fp8(self.weight):
                return super().forward(x)
            # the weight may live on the offload device; bring the fp8 bytes (half of bf16) over first
            weight = self.weight.to(x.device, non_blocking=True)
            weight_fns, bias_fns = getattr(self, "weight_function", ()), getattr(self, "bias_function", ())
            if weight_fns:  # a host's per-use weight patches (ComfyUI low-VRAM LoRA), on the stored values
                weight = weight.to(torch.float32)
                for fn in weight_fns:
                    weight = fn(weight)
            weight = dequantize_fp8(weight, self.scale_weight, x.dtype)
            bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
            for fn in bias_fns if bias is not None else ():
                bias = fn(bias)
            return F.linear(x, weight, bias)

    ScaledFp8Linear.__name__ = f"ScaledFp8{base.__name__}"
    return ScaledFp8Linear


class Fp8Operations:
    """``operations`` with ``Linear`` replaced by a ScaledFp8Linear subclass; other names pass through."""

    def __init__(self, operations):
        self.base = operations
        self.Linear = _scaled_linear_class(operations.Linear)

    def __getattr__(self, name: str):
        return getattr(self.base, name)


def fp8_operations(operations=torch.nn) -> Fp8Operations:
    """An ``operations`` namespace (default torch.nn) whose ``Linear`` can hold scaled fp8 weights."""
    return operations if isinstance(operations, Fp8Operations) else Fp8Operations(operations)


def assign_fp8_weight(module: torch.nn.Module, weight: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Give a ScaledFp8Linear its fp8 weight and scale (``weight`` already on the target device)."""
    if not hasattr(module, "scale_weight"):
        raise TypeError(
            f"{type(module).__name__} cannot hold fp8 weights; build the model with fp8_operations()"
        )
    module.weight = torch.nn.Parameter(weight, requires_grad=False)
    module.scale_weight = None if scale is None else scale.to(device=weight.device, dtype=torch.float32)


def fp8_weight_scales(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State-dict key -> scale of every weight kept as fp8 (for scale-aware host weight patches)."""
    return {
        f"{name}.weight": m.scale_weight
        for name, m in model.named_modules()
        if getattr(m, "scale_weight", None) is not None and is_fp8(m.weight)
    }
