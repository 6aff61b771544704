"""The one place where attention kernels are chosen and called.

Every attention in the DiT (self, text/image cross, audio cross) goes through ``attention``. Tensors
use the flash-attn layout ``[B, L, H, D]``. Backends:

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (any device, any float dtype).
- ``"flash"``: flash-attn 3 (``flash_attn_interface``) or 2 (``flash_attn``); CUDA, fp16/bf16 only.
- ``"sage"``: SageAttention (``sageattention``); CUDA, fp16/bf16 only. Quantises q/k to int8, so
  results differ slightly from exact attention (the reference enables it whenever it imports).
- ``"xformers"``: ``xformers.ops.memory_efficient_attention``; CUDA only.
- ``"auto"``: for fp16/bf16 tensors on CUDA, the fastest kernel installed: flash-attn 3 on Hopper
  (compute capability 9.x), else SageAttention (8-bit q·kᵀ, about 2x FA2; slightly approximate), else
  flash-attn 2, else sdpa. Anything else (CPU, fp32): sdpa. xformers is never picked automatically
  (no faster than sdpa). A host may name a preferred backend (ComfyUI's ``--use-sage-attention`` /
  ``--use-flash-attention`` / ``--use-pytorch-cross-attention``): see ``auto_backend``.
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from types import ModuleType

import torch
import torch.nn.functional as F

from ..errors import InputValidationError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flash", "sage", "xformers")
_HALF = (torch.float16, torch.bfloat16)
_PIP = {
    "flash": "pip install flash-attn",
    "sage": "pip install sageattention",
    "xformers": "pip install xformers (matching your torch build)",
}


@lru_cache(maxsize=None)
def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # a broken CUDA extension raises more than ImportError
        return None


def _flash_module() -> ModuleType | None:
    return _import("flash_attn_interface") or _import("flash_attn")  # FA3 when installed, else FA2


def _kernel_module(backend: str) -> ModuleType | None:
    if backend == "flash":
        return _flash_module()
    return _import({"sage": "sageattention", "xformers": "xformers.ops"}[backend])


def available_backends(device: torch.device | str = "cuda") -> list[str]:
    """Backends usable on ``device`` (sdpa always; the others need their package and CUDA)."""
    names = ["sdpa"]
    if torch.device(device).type == "cuda":
        names += [b for b in ("flash", "sage", "xformers") if _kernel_module(b) is not None]
    return names


def _is_hopper(device: torch.device) -> bool:
    try:
        return torch.cuda.get_device_capability(device)[0] == 9
    except Exception:  # no CUDA runtime (tests on CPU): not Hopper
        return False


def auto_backend(device: torch.device, dtype: torch.dtype, preferred: str | None = None) -> str:
    """The ``auto`` choice for tensors on ``device`` in ``dtype`` (see the module docstring).

    ``preferred`` (a host's attention flag) wins when it is usable there; otherwise the order is
    FA3 on Hopper, Sage, FA2, sdpa.
    """
    if device.type != "cuda" or dtype not in _HALF:
        return "sdpa"
    if preferred == "sdpa" or preferred in ("flash", "sage") and _kernel_module(preferred) is not None:
        return preferred
    if _import("flash_attn_interface") is not None and _is_hopper(device):
        return "flash"
    if _import("sageattention") is not None:
        return "sage"
    return "flash" if _import("flash_attn") is not None else "sdpa"


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, preferred: str | None = None) -> str:
    """Turn a requested backend name into the concrete one for tensors on ``device`` in ``dtype``
    (``preferred``: the host's attention flag, used by ``auto`` only)."""
    if name not in BACKENDS:
        raise InputValidationError(
            f"Unknown attention backend '{name}'.", f"Use one of {', '.join(BACKENDS)}."
        )
    if name == "auto":
        return auto_backend(device, dtype, preferred)
    if name == "sdpa":
        return name
    if device.type != "cuda":
        raise InputValidationError(
            f"Attention backend '{name}' needs a CUDA device, got {device}.",
            "Use attention 'sdpa' (or 'auto') on this device.",
        )
    if _kernel_module(name) is None:
        raise InputValidationError(
            f"Attention backend '{name}' was requested but its package is not importable.",
            f"{_PIP[name]}, or use attention 'sdpa' / 'auto'.",
        )
    if name in ("flash", "sage") and dtype not in _HALF:
        raise InputValidationError(
            f"Attention backend '{name}' needs fp16/bf16 tensors, got {dtype}.",
            "Run the model in bf16/fp16, or use attention 'sdpa'.",
        )
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Softmax(q·kᵀ/√D)·v without masks. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    ``backend`` must already be resolved (``resolve_backend``); the output has q's dtype.
    """
    if backend == "flash":
        out = _flash_module().flash_attn_func(q, k, v)
        return (out[0] if isinstance(out, tuple) else out).to(q.dtype)  # FA3 also returns the LSE
    if backend == "sage":
        return _import("sageattention").sageattn(q, k, v, tensor_layout="NHD").to(q.dtype)
    if backend == "xformers":
        return _import("xformers.ops").memory_efficient_attention(q, k, v).to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
