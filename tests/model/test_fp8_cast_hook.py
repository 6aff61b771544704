"""A host's casting hook for fp8-kept layers (``fp8.set_weight_cast``; ComfyUI: ``cast_bias_weight``), on CPU.

The layer must ask the host for its weight in the stored fp8 dtype (float32 only when it carries host weight
patches), compute with what the host hands back (fp8 GEMM or dequantize, never a dequantised copy on the fp8
path), release it after the last use, and behave exactly as before for layers the hook is not for. The
ComfyHost side adapts to the three ``cast_bias_weight`` signatures ComfyUI has had.
"""

from __future__ import annotations

import importlib
import inspect
import types

import pytest
import torch
import torch.nn.functional as F

from infinitetalk_core.model import fp8
from infinitetalk_core.model.fp8 import Fp8Operations, assign_fp8_weight, dequantize_fp8
from tests.pack_loader import sibling_module

compute_tests = sibling_module(__file__, "test_fp8_compute")
quantized, reference, rel_err, ShapeWatch = (compute_tests.quantized, compute_tests.reference,
                                             compute_tests.rel_err, compute_tests.ShapeWatch)

pytestmark = pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="torch._scaled_mm missing")


class HostLinear(torch.nn.Linear):
    """Stands in for a host's layer class (comfy.ops.CastWeightBiasOp's Linear): use-time patch lists."""

    weight_function: list = []
    bias_function: list = []


class HostOps:
    Linear = HostLinear


class FakeCast:
    """A host cast: moves nothing (one device) but returns a fresh copy in the dtype asked, applies the host
    patches like ComfyUI (weight_function on the weight in the dtype asked), records every call/release."""

    def __init__(self, return_float_raw: bool = False):
        self.calls, self.events, self.returned = [], [], []
        self.return_float_raw = return_float_raw  # a host that patches by itself and returns float raw values

    def __call__(self, module, x, weight_dtype, bias_dtype, keep_fp8):
        self.calls.append((module, weight_dtype, bias_dtype, keep_fp8))
        weight = module.weight.to(weight_dtype, copy=True)  # "moved": other storage than the parameter
        if self.return_float_raw:
            weight = module.weight.to(torch.float32) + 0.5
        for fn in module.weight_function:
            weight = fn(weight)
        bias = None if module.bias is None else module.bias.to(bias_dtype, copy=True)
        for fn in module.bias_function if bias is not None else ():
            bias = fn(bias)
        self.returned.append(weight)
        self.events.append("cast")
        return weight, bias, lambda: self.events.append("release")


@pytest.fixture
def host_cast(monkeypatch):
    monkeypatch.setattr(fp8, "_weight_casts", {})
    cast = FakeCast()
    fp8.set_weight_cast(HostLinear, cast)
    return cast


@pytest.fixture
def mm_calls(monkeypatch, host_cast):
    calls = []
    real = torch._scaled_mm

    def counting(*args, **kwargs):
        calls.append(args)
        host_cast.events.append("scaled_mm")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", counting)
    return calls


def host_layer(weight, scale, bias=None, compute="fp8", ops=HostOps):
    m = Fp8Operations(ops, compute=compute).Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                                   device="meta")
    assign_fp8_weight(m, weight, scale)
    if bias is not None:
        m.bias = torch.nn.Parameter(bias, requires_grad=False)
    return m


def test_fp8_path_asks_for_fp8_and_computes_with_what_the_host_returns(monkeypatch, host_cast, mm_calls):
    w, s = quantized(96, 64)
    bias = torch.randn(96)
    m = host_layer(w, s, bias)
    x = torch.randn(2, 9, 64, dtype=torch.bfloat16)

    def no_dequantize(*a, **k):
        raise AssertionError("dequantize_fp8 called on the fp8 path")

    monkeypatch.setattr(fp8, "dequantize_fp8", no_dequantize)
    with ShapeWatch(w.shape) as watch:
        y = m(x)
    assert not watch.hits, watch.hits  # no float tensor of the weight's shape, in the host or the layer
    assert [c[1:] for c in host_cast.calls] == [(torch.float8_e4m3fn, torch.bfloat16, True)]
    assert host_cast.calls[0][0] is m
    assert host_cast.events == ["cast", "scaled_mm", "release"]  # released after the last use
    (xq, wt, *_), = mm_calls
    returned = host_cast.returned[0]
    assert wt.data_ptr() == returned.data_ptr() != m.weight.data_ptr()  # the host's tensor, not the parameter
    assert rel_err(y, reference(x, w, s, bias)) <= compute_tests.MAX_REL_ERR


def test_dequantize_compute_gets_the_fp8_bytes_and_gives_todays_numbers(host_cast, mm_calls):
    w, s = quantized(96, 64, seed=2)
    bias = torch.randn(96)
    m = host_layer(w, s, bias, compute="dequantize")
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(m(x), reference(x, w, s, bias), rtol=0, atol=0)
    assert [c[1:] for c in host_cast.calls] == [(torch.float8_e4m3fn, torch.bfloat16, False)]
    assert not mm_calls and host_cast.events == ["cast", "release"]


def test_host_weight_patches_get_float32_raw_values(host_cast, mm_calls):
    w, s = quantized(96, 64, seed=3)
    bias = torch.randn(96)
    m = host_layer(w, s, bias)
    delta, dbias = torch.randn(96, 64) * 0.1, torch.randn(96)
    seen = []

    def patch(t):
        seen.append(t.dtype)
        return t + delta

    m.weight_function = [patch]
    m.bias_function = [lambda b: b + dbias.to(b.dtype)]
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    y = m(x)
    assert [c[1:] for c in host_cast.calls] == [(torch.float32, torch.bfloat16, False)]
    assert seen == [torch.float32]
    assert not mm_calls  # patched values are float: the dequantize path
    want = F.linear(x, dequantize_fp8(w.float() + delta, s, x.dtype), bias.to(x.dtype) + dbias.to(x.dtype))
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_float_weight_from_the_host_is_dequantised_with_the_scale(monkeypatch, mm_calls):
    monkeypatch.setattr(fp8, "_weight_casts", {})
    cast = FakeCast(return_float_raw=True)  # e.g. ComfyUI's dynamic-VRAM LoRA without re-quantisation
    fp8.set_weight_cast(HostLinear, cast)
    w, s = quantized(96, 64, seed=4)
    m = host_layer(w, s)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    y = m(x)
    assert cast.calls[0][1] == torch.float8_e4m3fn and not mm_calls
    torch.testing.assert_close(y, reference(x, w.float() + 0.5, s), rtol=0, atol=0)


def test_release_runs_when_the_gemm_fails(monkeypatch, host_cast):
    def unsupported(*a, **k):
        raise RuntimeError("not supported on this device")

    monkeypatch.setattr(torch, "_scaled_mm", unsupported)
    m = host_layer(*quantized(96, 64))
    with pytest.raises(RuntimeError, match="not supported"):
        m(torch.randn(2, 64, dtype=torch.bfloat16))
    assert host_cast.events == ["cast", "release"]


def test_other_layers_and_removed_hooks_are_unchanged(host_cast, mm_calls):
    w, s = quantized(96, 64, seed=5)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    plain = host_layer(w, s, ops=torch.nn)  # not a HostLinear: moves its own bytes as before
    y = plain(x)
    assert not host_cast.calls and len(mm_calls) == 1
    hosted = host_layer(w, s)
    torch.testing.assert_close(hosted(x), y, rtol=0, atol=0)
    assert len(host_cast.calls) == 1
    fp8.set_weight_cast(HostLinear, None)
    assert fp8.weight_cast_for(hosted) is None
    torch.testing.assert_close(hosted(x), y, rtol=0, atol=0)
    assert len(host_cast.calls) == 1
    bf16 = Fp8Operations(HostOps).Linear(64, 32, dtype=torch.bfloat16)  # a plain weight: the base's forward
    fp8.set_weight_cast(HostLinear, host_cast)
    bf16(x)
    assert len(host_cast.calls) == 1


def test_offloaded_scale_is_copied_once_per_device():
    m = host_layer(*quantized(32, 32))
    meta = torch.device("meta")
    first = fp8._device_scale(m, meta)
    assert first.device == meta and fp8._device_scale(m, meta) is first
    assert fp8._device_scale(m, torch.device("cpu")) is m.scale_weight  # already there: no copy
    assign_fp8_weight(m, *quantized(32, 32, seed=1))  # a new scale: a new copy
    assert fp8._device_scale(m, meta) is not first


# ComfyHost's adapter over comfy.ops.cast_bias_weight ------------------------------------------------


def _pack_modules():
    from tests.pack_loader import PACK_MODULE, load_pack

    load_pack()
    return (importlib.import_module(f"{PACK_MODULE}.nodes.comfy_fp8_cast"),
            importlib.import_module(f"{PACK_MODULE}.infinitetalk_core.model.fp8"))  # the pack's own copy


def _fake_ops(version: str):
    """A comfy.ops with the cast_bias_weight of an old (2 values), offloadable (3 values + uncast) or
    newest (compute_dtype / want_requant) ComfyUI; records every call."""
    ops = types.SimpleNamespace(calls=[], uncast=[])

    class CastWeightBiasOp:
        weight_function: list = []
        bias_function: list = []

    ops.CastWeightBiasOp = CastWeightBiasOp

    def cast(s, input=None, dtype=None, device=None, bias_dtype=None, **kw):
        ops.calls.append({"dtype": dtype, "device": device, "bias_dtype": bias_dtype, **kw})
        weight = s.weight.to(device=device, dtype=dtype)
        bias = None if s.bias is None else s.bias.to(device=device, dtype=bias_dtype)
        return (weight, bias, "stream") if kw.get("offloadable") else (weight, bias)

    if version == "old":
        def cast_bias_weight(s, input=None, dtype=None, device=None, bias_dtype=None):
            return cast(s, input, dtype, device, bias_dtype)
    elif version == "offloadable":
        def cast_bias_weight(s, input=None, dtype=None, device=None, bias_dtype=None, offloadable=False):
            return cast(s, input, dtype, device, bias_dtype, offloadable=offloadable)
    elif version == "newest":
        def cast_bias_weight(s, input=None, dtype=None, device=None, bias_dtype=None, offloadable=False,
                             compute_dtype=None, want_requant=False):
            return cast(s, input, dtype, device, bias_dtype, offloadable=offloadable,
                        compute_dtype=compute_dtype, want_requant=want_requant)
    else:  # 2023: the input's dtype, always
        def cast_bias_weight(s, input):
            raise AssertionError("must not be used")
    ops.cast_bias_weight = cast_bias_weight
    if version != "old" and version != "ancient":
        ops.uncast_bias_weight = lambda s, w, b, stream: ops.uncast.append((s, stream))
    return ops


@pytest.mark.parametrize("version", ["old", "offloadable", "newest"])
def test_comfy_adapter_handles_each_cast_bias_weight_signature(version, monkeypatch):
    host_module, pack_fp8 = _pack_modules()
    monkeypatch.setattr(pack_fp8, "_weight_casts", {})
    ops = _fake_ops(version)
    assert host_module.install_fp8_cast(ops)
    cast = pack_fp8.weight_cast_for_base(ops.CastWeightBiasOp)
    assert host_module.install_fp8_cast(ops) and pack_fp8.weight_cast_for_base(ops.CastWeightBiasOp) is cast

    class Linear(torch.nn.Linear, ops.CastWeightBiasOp):
        pass

    ops_ns = pack_fp8.Fp8Operations(types.SimpleNamespace(Linear=Linear), compute="fp8")
    m = ops_ns.Linear(64, 96, device="meta")
    w, s = quantized(96, 64)
    pack_fp8.assign_fp8_weight(m, w, s)
    m.bias = torch.nn.Parameter(torch.randn(96), requires_grad=False)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    y = m(x)
    assert rel_err(y, reference(x, w, s, m.bias)) <= compute_tests.MAX_REL_ERR
    (call,) = ops.calls
    assert call["dtype"] == torch.float8_e4m3fn and call["bias_dtype"] == torch.bfloat16
    assert call["device"] == x.device
    assert call.get("offloadable", False) == (version != "old")
    assert ops.uncast == ([] if version == "old" else [(m, "stream")])  # handed back after the GEMM
    if version == "newest":
        assert call["compute_dtype"] == torch.float32 and call["want_requant"] is True
        m.fp8_compute = "dequantize"
        m(x)
        assert ops.calls[-1]["want_requant"] is False  # dequantize path: ComfyUI may return float patches
    else:
        assert "compute_dtype" not in call and "want_requant" not in call
    assert "dtype" in inspect.signature(ops.cast_bias_weight).parameters


def test_comfy_adapter_leaves_too_old_comfyui_alone(monkeypatch):
    host_module, pack_fp8 = _pack_modules()
    monkeypatch.setattr(pack_fp8, "_weight_casts", {})
    ops = _fake_ops("ancient")
    assert host_module.comfy_fp8_cast(ops) is None
    assert not host_module.install_fp8_cast(ops)
    assert pack_fp8.weight_cast_for_base(ops.CastWeightBiasOp) is None
    assert not host_module.install_fp8_cast(types.SimpleNamespace())  # no CastWeightBiasOp
