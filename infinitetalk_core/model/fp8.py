"""fp8 "scaled" weights: dequantise on load, or keep fp8 storage and dequantise or fp8-multiply per call.

A scaled fp8 file stores ``W ≈ weight_fp8 · scale`` per Linear (one fp32 scale per tensor, sometimes one
per output row). Two ways to use it, chosen by the loader's ``fp8_mode``:

- ``"dequantize"`` (default): ``W`` is rebuilt once at load time in the target dtype. Same speed and
  memory as a bf16 file; simplest and exactly the numbers the file encodes.
- ``"keep"``: the fp8 bytes stay as the parameter (half the memory of bf16) and ``ScaledFp8Linear``
  computes each call in one of two ways (its ``fp8_compute``):

  - ``"dequantize"`` (the default): ``W`` is rebuilt with ``dequantize_fp8`` for the call, then
    ``F.linear``. Identical outputs to ``fp8_mode="dequantize"``.
  - ``"fp8"``: a real fp8 GEMM, ``torch._scaled_mm``. The activation is quantised to float8_e4m3fn
    with a scale (``fp8_activation_scale``: ``"tensor"`` = one amax/448 scale for the whole input,
    the default; ``"token"`` = one per row, robust to outlier tokens), multiplied with the stored fp8
    weight (``weight.t()``: the [out, in] row-major bytes viewed as the column-major [in, out] operand,
    no copy) and its scale, accumulated in fp32 and written in the activation dtype with the bias
    fused. No dequantised weight is ever built. The cost is the activation's rounding to 3 mantissa
    bits: 2.6-2.7 % relative (Frobenius) output error against the dequantize path on the 14B block
    shapes (``bench/fp8_error.py``), the same trade ComfyUI makes with ``--fast fp8_matrix_mult``. That
    figure is a floor for any one-pass e4m3 activation: a float format's relative rounding error does
    not depend on the scale, so per-token scales, smoothing (with power-of-two factors, which leave the
    fp8 weight exact) or rotations cannot lower it, and smoothing / rotating with a re-quantised weight
    adds the weight's own rounding (~3.8 %). Below 2 % needs a second GEMM on the activation's residual
    (x = e4m3(x) + e4m3(rest): 0.35 %, but twice the fp8 work, i.e. the bf16 GEMM's time; splitting
    only the half of the tokens with the largest residual gives 1.9 % overall at 0.75x, while the other
    tokens keep their 2.8 %).
  - ``"auto"``: ``"fp8"`` where it is known to pay off and work: CUDA (not ROCm) with compute
    capability >= 8.9 and bf16/fp16 activations; everywhere else ``"dequantize"``. CPU ``_scaled_mm``
    works in torch 2.13 (the tests use it through ``"fp8"``) but its speed depends on the CPU.

  A call takes the fp8 path only when all of these hold, else it silently uses the dequantize path:
  weight float8_e4m3fn (e5m2 falls back), 2-D and contiguous; scale per tensor (0-d or [1]) or absent
  (a per-row scale falls back); in and out features divisible by 16 (``_scaled_mm``'s rule); no host
  ``weight_function`` patches (ComfyUI low-VRAM LoRA: they need the stored values in float) and the
  weight the host hands back still fp8; a non-empty input;
  bf16/fp16 activations, or fp32 with ``"fp8"`` (then fp32 output, bias added after the GEMM; ``"auto"``
  keeps fp32 on the dequantize path because whoever runs in fp32 asked for precision). Under ``"auto"``
  a ``_scaled_mm`` error (an unsupported device / dtype / scaling combination, e.g. per-token scales
  with fp16 output on CUDA) is remembered for that combination and the call falls back; under ``"fp8"``
  it is raised.

Where the weight comes from. Without a host hook the layer moves its fp8 bytes to the input's device
itself (``weight.to(x.device)``). A host that streams layers (ComfyUI's partial / low-VRAM loads, offload
streams, use-time LoRA patches) registers a casting function for its layer base class with
``set_weight_cast(base, cast)``; every fp8-holding layer that is a ``base`` then gets its weight and bias
from ``cast(module, x, weight_dtype, bias_dtype, keep_fp8) -> (weight, bias, release)``:

- ``weight_dtype`` is the stored fp8 dtype itself, so the host moves the fp8 bytes (no dequantised copy
  is made by anyone); when the layer carries host ``weight_function`` patches it is float32 instead (the
  patches add to the stored values ``W / scale``, which needs a float tensor) and the call dequantises.
- ``keep_fp8`` tells the host the call will run on the fp8 path: a host that patches weights by itself at
  cast time may hand back the patched weight re-quantised to fp8 (ComfyUI's ``want_requant``); otherwise
  it may return float raw values, which the layer dequantises (scale applied) like any patched weight.
- ``bias_dtype`` is the activation dtype; the bias comes back patched. ``release`` (or None) is called
  after the last use of the weight and bias (ComfyUI's ``uncast_bias_weight``: the offload stream may
  reuse the buffer).

The core never imports the host: ``nodes/host.py`` installs ComfyUI's ``comfy.ops.cast_bias_weight``.
The weight scale is a buffer the host does not move for an offloaded layer; the layer keeps one copy of
it per device (4 bytes) so such a call does not block on a host-to-device copy.

How a host chooses: ``fp8_operations(ops, compute="auto", activation_scale="token")`` before building
the model, or on a built / loaded model ``set_fp8_compute(model, "fp8", activation_scale="tensor")``
(sets both attributes on every ScaledFp8Linear). The module defaults are ``DEFAULT_COMPUTE`` and
``DEFAULT_ACTIVATION_SCALE``; the loader (``fp8_operations(operations)``) uses them.

Dequantisation multiplies in float32 and rounds once to the target dtype (fp8 -> fp32 is exact).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

FP8_TORCH_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
QUANT_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
FP8_MODES = ("dequantize", "keep")
COMPUTE_MODES = ("auto", "fp8", "dequantize")
ACTIVATION_SCALES = ("tensor", "token")
DEFAULT_COMPUTE = "dequantize"  # keep-mode outputs stay those of fp8_mode="dequantize" unless a host opts in
DEFAULT_ACTIVATION_SCALE = "tensor"

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
_SCALED_MM_MULTIPLE = 16  # _scaled_mm: in and out features divisible by 16
_FP8_OUT_DTYPES = (torch.bfloat16, torch.float16)
_failed_combos: set[tuple] = set()  # (device, out dtype, activation scale) where "auto" saw _scaled_mm fail


WeightCast = Callable[
    [torch.nn.Module, torch.Tensor, torch.dtype, torch.dtype, bool],
    tuple[torch.Tensor, "torch.Tensor | None", "Callable[[], None] | None"],
]
_weight_casts: dict[type, WeightCast] = {}  # layer base class -> the host's casting function


def set_weight_cast(layer_base: type, cast: WeightCast | None) -> None:
    """Route the weight and bias of every fp8-holding ScaledFp8Linear that is a ``layer_base`` through
    ``cast`` (None removes it). A host calls this for its own layer classes (see the module docstring)."""
    if cast is None:
        _weight_casts.pop(layer_base, None)
    else:
        _weight_casts[layer_base] = cast


def weight_cast_for_base(layer_base: type) -> WeightCast | None:
    """The casting function registered for exactly ``layer_base`` (None: none)."""
    return _weight_casts.get(layer_base)


def weight_cast_for(module: torch.nn.Module) -> WeightCast | None:
    """The casting function registered for ``module``'s class (the first matching base), or None."""
    for base, cast in _weight_casts.items():
        if isinstance(module, base):
            return cast
    return None


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


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _auto_device_ok(device: torch.device) -> bool:
    """Whether "auto" uses _scaled_mm on ``device``: CUDA (not ROCm) with compute capability >= 8.9."""
    if device.type != "cuda" or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_activation(x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D ``x`` -> (float8_e4m3fn values, float32 scale: 0-d, or [rows, 1] if ``per_token``).

    scale = amax / 448 (floored so an all-zero row cannot divide by zero). The division runs in ``x``'s
    dtype (no float32 copy of a bf16 activation); the scale is first rounded to that dtype so the value
    handed to _scaled_mm is exactly the one divided by.
    """
    if per_token:
        lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    else:
        lo, hi = torch.aminmax(x)
    amax = torch.maximum(hi, lo.neg()).to(torch.float32)
    scale = (amax / E4M3_MAX).clamp_(min=max(torch.finfo(x.dtype).tiny, 1e-12)).to(x.dtype)
    q = (x / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale.to(torch.float32)


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    activation_scale: str = DEFAULT_ACTIVATION_SCALE,
) -> torch.Tensor:
    """``x @ (weight · scale)^T + bias`` with ``torch._scaled_mm``; the caller checked ``fp8_eligible``.

    ``x`` [..., in] (bf16 / fp16 / fp32), ``weight`` [out, in] float8_e4m3fn row-major on ``x``'s
    device, ``scale`` a per-tensor float32 weight scale or None (= 1). Returns [..., out] in ``x.dtype``.
    """
    out_features = weight.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    per_token = activation_scale == "token"
    xq, scale_a = quantize_activation(x2, per_token)
    if scale is None:
        scale_b = torch.ones((), device=x.device, dtype=torch.float32)
    else:
        scale_b = scale.to(device=x.device, dtype=torch.float32).reshape(())
    if per_token:  # row-wise scaling wants scale_b [1, out] next to scale_a [rows, 1]
        scale_b = scale_b.expand(1, out_features).contiguous()
    fused_bias = bias is not None and x.dtype in _FP8_OUT_DTYPES
    y = torch._scaled_mm(
        xq,
        weight.t(),  # [in, out] column-major view of the [out, in] row-major bytes: no copy
        scale_a=scale_a,
        scale_b=scale_b,
        bias=bias.to(x.dtype) if fused_bias else None,
        out_dtype=x.dtype,
    )
    if bias is not None and not fused_bias:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, out_features)


def fp8_eligible(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, compute: str, activation_scale: str
) -> bool:
    """Whether a ScaledFp8Linear call takes the _scaled_mm path (see the module docstring)."""
    if compute == "dequantize" or weight.dtype != torch.float8_e4m3fn or weight.dim() != 2:
        return False
    if scale is not None and scale.numel() != 1:
        return False  # per-row weight scales: dequantize path
    out_features, in_features = weight.shape
    if in_features % _SCALED_MM_MULTIPLE or out_features % _SCALED_MM_MULTIPLE or x.shape[-1] != in_features:
        return False
    if x.numel() == 0 or not weight.is_contiguous():
        return False
    if compute == "fp8":
        return x.dtype in (*_FP8_OUT_DTYPES, torch.float32)
    return (
        x.dtype in _FP8_OUT_DTYPES
        and _auto_device_ok(x.device)
        and (str(x.device), x.dtype, activation_scale) not in _failed_combos
    )


def _own_cast(module: torch.nn.Module, x: torch.Tensor, host_fns: bool):
    """No host casting hook: the fp8 bytes travel to ``x``'s device as they are (half of bf16).

    Host ``weight_function`` patches (if any: a host without a hook) get the stored values in float32.
    """
    weight = module.weight.to(x.device, non_blocking=True)
    if host_fns:
        weight = weight.to(torch.float32)
        for fn in module.weight_function:
            weight = fn(weight)
    bias = None if module.bias is None else module.bias.to(device=x.device, dtype=x.dtype)
    for fn in getattr(module, "bias_function", ()) if bias is not None else ():
        bias = fn(bias)
    return weight, bias, None


def _device_scale(module: torch.nn.Module, device: torch.device) -> torch.Tensor | None:
    """``scale_weight`` on ``device``; a copy is kept per device so an offloaded layer (its buffers left on
    the CPU by a host's partial load) does not pay a blocking host-to-device copy at every call."""
    scale = module.scale_weight
    if scale is None or scale.device == device:
        return scale
    cached = module.__dict__.get("_fp8_scale_copy")
    if cached is not None and cached[0] is scale and cached[1].device == device:
        return cached[1]
    copy = scale.to(device=device, dtype=torch.float32)
    module.__dict__["_fp8_scale_copy"] = (scale, copy)
    return copy


def _scaled_forward(
    module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """One call of a ScaledFp8Linear once its weight and bias are on ``x``'s device.

    ``weight`` is the stored fp8 bytes, or float raw values (``W / scale``) a host patched; bias in
    ``x.dtype``, patched. fp8 GEMM where eligible, else dequantise-then-F.linear.
    """
    scale = _device_scale(module, x.device)
    compute, act_scale = module.fp8_compute, module.fp8_activation_scale
    if is_fp8(weight) and fp8_eligible(x, weight, scale, compute, act_scale):
        try:
            return fp8_linear(x, weight, scale, bias, act_scale)
        except RuntimeError:
            if compute == "fp8":
                raise
            _failed_combos.add((str(x.device), x.dtype, act_scale))  # "auto": never try again
    return F.linear(x, dequantize_fp8(weight, scale, x.dtype), bias)


def _scaled_linear_class(base: type, compute: str, activation_scale: str) -> type:
    class ScaledFp8Linear(base):
        """``base`` Linear whose weight may be fp8 with a ``scale_weight`` buffer (not in the state dict).

        ``fp8_compute`` / ``fp8_activation_scale`` (class defaults from ``Fp8Operations``; set them on an
        instance, or with ``set_fp8_compute``, to change one layer or a built model).
        """

        fp8_compute = compute
        fp8_activation_scale = activation_scale

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("scale_weight", None, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not is_fp8(self.weight):
                return super().forward(x)
            host_fns = bool(getattr(self, "weight_function", ()))
            cast = weight_cast_for(self)
            if cast is None:
                weight, bias, release = _own_cast(self, x, host_fns)
            else:  # the host's casting path: fp8 bytes (or float32 raw values when it patches them)
                keep = not host_fns and fp8_eligible(
                    x, self.weight, self.scale_weight, self.fp8_compute, self.fp8_activation_scale
                )
                weight_dtype = torch.float32 if host_fns else self.weight.dtype
                weight, bias, release = cast(self, x, weight_dtype, x.dtype, keep)
            try:
                return _scaled_forward(self, x, weight, bias)
            finally:
                if release is not None:
                    release()

    ScaledFp8Linear.__name__ = f"ScaledFp8{base.__name__}"
    return ScaledFp8Linear


class Fp8Operations:
    """``operations`` with ``Linear`` replaced by a ScaledFp8Linear subclass; other names pass through.

    ``compute``: "auto" | "fp8" | "dequantize"; ``activation_scale``: "tensor" | "token" (module docstring).
    None = the module defaults.
    """

    def __init__(self, operations, compute: str | None = None, activation_scale: str | None = None):
        self.base = operations
        self.compute = _check_choice("compute", compute or DEFAULT_COMPUTE, COMPUTE_MODES)
        self.activation_scale = _check_choice(
            "activation_scale", activation_scale or DEFAULT_ACTIVATION_SCALE, ACTIVATION_SCALES
        )
        self.Linear = _scaled_linear_class(operations.Linear, self.compute, self.activation_scale)

    def __getattr__(self, name: str):
        return getattr(self.base, name)


def fp8_operations(
    operations=torch.nn, compute: str | None = None, activation_scale: str | None = None
) -> Fp8Operations:
    """An ``operations`` namespace (default torch.nn) whose ``Linear`` can hold scaled fp8 weights.

    An ``Fp8Operations`` is returned as is unless ``compute`` / ``activation_scale`` ask for other
    settings (then its base is wrapped again with them).
    """
    if isinstance(operations, Fp8Operations):
        if (compute or operations.compute) == operations.compute and (
            activation_scale or operations.activation_scale
        ) == operations.activation_scale:
            return operations
        operations = operations.base
    return Fp8Operations(operations, compute, activation_scale)


def set_fp8_compute(
    model: torch.nn.Module, compute: str | None = None, activation_scale: str | None = None
) -> int:
    """Set ``fp8_compute`` / ``fp8_activation_scale`` (None = leave) on every ScaledFp8Linear of ``model``.

    Returns how many layers hold an fp8 weight (those the setting affects).
    """
    if compute is not None:
        _check_choice("compute", compute, COMPUTE_MODES)
    if activation_scale is not None:
        _check_choice("activation_scale", activation_scale, ACTIVATION_SCALES)
    n = 0
    for m in model.modules():
        if not hasattr(m, "fp8_compute"):
            continue
        if compute is not None:
            m.fp8_compute = compute
        if activation_scale is not None:
            m.fp8_activation_scale = activation_scale
        n += is_fp8(m.weight)
    return n


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
