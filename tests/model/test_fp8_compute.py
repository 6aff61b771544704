"""fp8 compute (``torch._scaled_mm``) for kept scaled-fp8 weights, on CPU.

The fp8 path must be the one taken (``_scaled_mm`` called, no float copy of the weight ever built), stay
within the activation-rounding error of the dequantize path on the real 14B block shapes, and every case
it cannot take (per-row scales, shapes off the 16 grid, e5m2, host weight patches, fp32 under "auto")
must give exactly today's dequantize-path numbers.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from infinitetalk_core.model import fp8
from infinitetalk_core.model.fp8 import (
    Fp8Operations,
    assign_fp8_weight,
    dequantize_fp8,
    fp8_operations,
    set_fp8_compute,
)

BASE, AUDIO = "wan21_i2v_14b_480p.json", "infinitetalk_single.json"
TOKENS = 256
# e4m3 keeps 3 mantissa bits: rounding a Gaussian activation to it costs ~2.5-2.7 % relative (Frobenius)
# on its own (uniform rounding error of +-2^-4 relative at worst, ~2.6 % rms); the weight is already fp8
# in both paths, so that is the whole expected difference. The bound leaves a little room above it.
MAX_REL_ERR = 0.03

pytestmark = pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="torch._scaled_mm missing")


def block_linear_shapes(manifests_dir) -> dict[str, tuple[int, int]]:
    """Distinct [out, in] Linear shapes of block 0 (base I2V-14B + InfiniteTalk audio), one name each."""
    shapes: dict[tuple[int, int], str] = {}
    for name in (BASE, AUDIO):
        tensors = json.loads((manifests_dir / name).read_text())["tensors"]
        for key, shape in tensors.items():
            if key.startswith("blocks.0.") and key.endswith(".weight") and len(shape) == 2:
                shapes.setdefault(tuple(shape), key[len("blocks.0.") : -len(".weight")])
    return {v: k for k, v in shapes.items()}


def quantized(out_f: int, in_f: int, seed: int = 0, dtype=torch.float8_e4m3fn, scale_shape=()):
    """(fp8 weight [out, in], fp32 scale of ``scale_shape``) of a random N(0, 1/in) weight."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    if scale_shape in ((), (1,)):
        scale = (w.abs().max() / torch.finfo(dtype).max).reshape(scale_shape)
    else:  # per output row
        scale = (w.abs().amax(1) / torch.finfo(dtype).max).reshape(scale_shape)
    return (w / fp8._broadcast_scale(scale, w)).to(dtype), scale.float()


def layer(weight, scale, bias=None, compute="fp8", activation_scale="tensor"):
    ops = Fp8Operations(torch.nn, compute=compute, activation_scale=activation_scale)
    m = ops.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    assign_fp8_weight(m, weight, scale)
    if bias is not None:
        m.bias = torch.nn.Parameter(bias, requires_grad=False)
    return m


def reference(x, weight, scale, bias=None):
    """Today's keep-mode result: dequantise to the activation dtype, F.linear."""
    b = None if bias is None else bias.to(x.dtype)
    return F.linear(x, dequantize_fp8(weight, scale, x.dtype), b)


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def scaled_mm_calls(monkeypatch):
    calls = []
    real = torch._scaled_mm

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", counting)
    return calls


class ShapeWatch(TorchDispatchMode):
    """Records every op output that is a non-fp8 tensor with ``shape`` or its transpose."""

    def __init__(self, shape):
        super().__init__()
        self.shapes = {tuple(shape), tuple(shape)[::-1]}
        self.hits = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and tuple(t.shape) in self.shapes and not fp8.is_fp8(t):
                self.hits.append((str(func), t.dtype))
        return out


def test_fp8_path_is_used_and_builds_no_float_weight(monkeypatch, scaled_mm_calls):
    w, s = quantized(96, 64)
    bias = torch.randn(96)
    m = layer(w, s, bias)
    x = torch.randn(2, 20, 64, dtype=torch.bfloat16)

    def no_dequantize(*a, **k):
        raise AssertionError("dequantize_fp8 called on the fp8 path")

    monkeypatch.setattr(fp8, "dequantize_fp8", no_dequantize)
    with ShapeWatch(w.shape) as watch:
        y = m(x)
    assert len(scaled_mm_calls) == 1 and not watch.hits, watch.hits
    (xq, wt), kw = scaled_mm_calls[0]
    assert xq.dtype == torch.float8_e4m3fn and xq.shape == (40, 64)
    # the weight operand is the stored bytes viewed as [in, out] column-major: same storage, no copy
    assert wt.shape == (64, 96) and wt.stride() == (1, 64) and wt.data_ptr() == m.weight.data_ptr()
    assert kw["out_dtype"] == torch.bfloat16 and kw["scale_b"].item() == s.item()
    assert y.shape == (2, 20, 96) and y.dtype == torch.bfloat16


def test_error_on_real_14b_block_shapes(manifests_dir, scaled_mm_calls):
    shapes = block_linear_shapes(manifests_dir)
    assert {(5120, 5120), (13824, 5120), (5120, 13824), (10240, 768)} <= set(shapes.values())
    g = torch.Generator().manual_seed(1)
    for i, (name, (out_f, in_f)) in enumerate(sorted(shapes.items())):
        w, s = quantized(out_f, in_f, seed=i)
        x = torch.randn(1, TOKENS, in_f, generator=g).to(torch.bfloat16)
        ref = reference(x, w, s)
        errs = {}
        for mode in ("tensor", "token"):
            y = layer(w, s, activation_scale=mode)(x)
            assert y.dtype == torch.bfloat16 and y.shape == ref.shape
            errs[mode] = rel_err(y, ref)
        print(f"{name} [{out_f}x{in_f}]: rel err tensor {errs['tensor']:.4f}, token {errs['token']:.4f}")
        assert max(errs.values()) <= MAX_REL_ERR, (name, errs)
    assert len(scaled_mm_calls) == 2 * len(shapes)


def test_per_token_scales_handle_outlier_rows(scaled_mm_calls):
    w, s = quantized(256, 512, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 512, generator=g)
    x[::16] *= 3e4  # a few outlier tokens: per tensor they push the rest into fp8's subnormals
    x = x.to(torch.bfloat16)
    ref = reference(x, w, s)
    y_tensor = layer(w, s, activation_scale="tensor")(x)
    y_token = layer(w, s, activation_scale="token")(x)
    assert scaled_mm_calls[1][1]["scale_a"].shape == (64, 1)
    assert scaled_mm_calls[1][1]["scale_b"].shape == (1, 256)
    normal = torch.ones(64, dtype=torch.bool)
    normal[::16] = False
    e_tensor, e_token = rel_err(y_tensor[normal], ref[normal]), rel_err(y_token[normal], ref[normal])
    print(f"ordinary rows next to outliers: rel err tensor {e_tensor:.4f}, token {e_token:.4f}")
    assert e_token <= MAX_REL_ERR and e_token <= e_tensor and e_tensor > 2 * e_token
    assert rel_err(y_token, ref) <= rel_err(y_tensor, ref) + 1e-4


@pytest.mark.parametrize("case", ["per_row_scale", "per_row_scale_2d", "not_16", "e5m2", "weight_function"])
def test_fallbacks_give_todays_numbers(case, scaled_mm_calls):
    out_f, in_f = (40, 24) if case == "not_16" else (96, 64)
    dtype = torch.float8_e5m2 if case == "e5m2" else torch.float8_e4m3fn
    scale_shape = {"per_row_scale": (out_f,), "per_row_scale_2d": (out_f, 1)}.get(case, ())
    w, s = quantized(out_f, in_f, dtype=dtype, scale_shape=scale_shape)
    bias = torch.randn(out_f)
    m = layer(w, s, bias)
    x = torch.randn(3, 7, in_f).to(torch.bfloat16)
    expected_w = w
    if case == "weight_function":
        delta = torch.randn(out_f, in_f) * 0.1
        m.weight_function = [lambda t: t + delta]
        expected_w = w.float() + delta
    y = m(x)
    assert not scaled_mm_calls
    torch.testing.assert_close(y, reference(x, expected_w, s, bias), rtol=0, atol=0)


@pytest.mark.parametrize("act_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("mode", ["tensor", "token"])
def test_bias_3d_input_and_output_dtype(act_dtype, mode, scaled_mm_calls):
    w, s = quantized(128, 64, seed=5)
    bias = torch.randn(128) * 3
    x = torch.randn(2, 33, 64).to(act_dtype)
    y = layer(w, s, bias, activation_scale=mode)(x)
    assert len(scaled_mm_calls) == 1
    assert y.dtype == act_dtype and y.shape == (2, 33, 128)
    ref = reference(x, w, s, bias)
    assert rel_err(y, ref) <= MAX_REL_ERR
    # the bias is added once: without it the output is off by exactly the bias
    no_bias = layer(w, s, None, activation_scale=mode)(x)
    assert rel_err(y - no_bias, bias.to(act_dtype).expand_as(y)) < 1e-2


def test_auto_uses_dequantize_on_cpu_and_remembers_failures(monkeypatch, scaled_mm_calls):
    w, s = quantized(96, 64)
    x = torch.randn(5, 64).to(torch.bfloat16)
    m = layer(w, s, compute="auto")
    torch.testing.assert_close(m(x), reference(x, w, s), rtol=0, atol=0)
    assert not scaled_mm_calls  # CPU is not an "auto" device

    monkeypatch.setattr(fp8, "_auto_device_ok", lambda device: True)
    monkeypatch.setattr(fp8, "_failed_combos", set())
    assert fp8.fp8_eligible(x, w, s, "auto", "tensor")
    assert not fp8.fp8_eligible(x.float(), w, s, "auto", "tensor")  # fp32 stays precise under "auto"
    torch.testing.assert_close(m(x), layer(w, s)(x), rtol=0, atol=0)  # now the fp8 path
    n = len(scaled_mm_calls)

    def unsupported(*a, **k):
        raise RuntimeError("not supported on this device")

    monkeypatch.setattr(torch, "_scaled_mm", unsupported)
    m.fp8_activation_scale = "token"
    torch.testing.assert_close(m(x), reference(x, w, s), rtol=0, atol=0)  # fell back
    assert ("cpu", torch.bfloat16, "token") in fp8._failed_combos
    torch.testing.assert_close(m(x), reference(x, w, s), rtol=0, atol=0)  # not tried again
    with pytest.raises(RuntimeError, match="not supported"):
        layer(w, s, compute="fp8")(x)  # an explicit "fp8" raises
    assert len(scaled_mm_calls) == n


def test_settings_api(scaled_mm_calls):
    ops = fp8_operations()
    assert ops.compute == fp8.DEFAULT_COMPUTE == "dequantize" and ops.activation_scale == "tensor"
    assert fp8_operations(ops) is ops and fp8_operations(ops, compute="dequantize") is ops
    fast = fp8_operations(ops, compute="fp8", activation_scale="token")
    assert fast is not ops and fast.base is torch.nn and fast.Linear.fp8_compute == "fp8"
    with pytest.raises(ValueError, match="compute"):
        Fp8Operations(torch.nn, compute="fast")
    with pytest.raises(ValueError, match="activation_scale"):
        fp8_operations(activation_scale="channel")

    w, s = quantized(96, 64)
    model = torch.nn.Sequential(layer(w, s, compute="dequantize"), torch.nn.GELU(), layer(*quantized(64, 96)))
    model.append(ops.Linear(64, 32, dtype=torch.bfloat16))  # a ScaledFp8Linear with a plain weight
    x = torch.randn(4, 64).to(torch.bfloat16)
    assert set_fp8_compute(model, "dequantize") == 2
    before = model(x)
    assert not scaled_mm_calls
    assert set_fp8_compute(model, "fp8", activation_scale="token") == 2
    after = model(x)
    assert len(scaled_mm_calls) == 2 and rel_err(after, before) <= 2 * MAX_REL_ERR
    assert all(getattr(m, "fp8_activation_scale", "token") == "token" for m in model)
