"""attention "auto": FA3 on Hopper, else Sage, else FA2, else SDPA; a host's flag wins when usable."""
from __future__ import annotations

import types

import pytest
import torch

from infinitetalk_core.model import attention as attention_module
from infinitetalk_core.model.attention import auto_backend, resolve_backend

CUDA = torch.device("cuda")  # only its type is read: no GPU is needed


@pytest.fixture
def installed(monkeypatch):
    """installed({"flash_attn", ...}, hopper=True): pretend these kernel packages import."""
    def install(names: set[str], hopper: bool = False):
        monkeypatch.setattr(attention_module, "_import",
                            lambda name: types.ModuleType(name) if name in names else None)
        monkeypatch.setattr(attention_module, "_is_hopper", lambda device: hopper)

    return install


@pytest.mark.parametrize("names, hopper, expected", [
    ({"flash_attn_interface", "sageattention", "flash_attn"}, True, "flash"),  # FA3 on Hopper
    ({"flash_attn_interface", "sageattention", "flash_attn"}, False, "sage"),  # FA3 runs on Hopper only
    ({"sageattention", "flash_attn"}, True, "sage"),
    ({"flash_attn"}, False, "flash"),
    (set(), True, "sdpa"),
])
def test_auto_picks_the_fastest_installed_kernel(installed, names, hopper, expected):
    installed(names, hopper)
    assert resolve_backend("auto", CUDA, torch.bfloat16) == expected
    assert resolve_backend("auto", CUDA, torch.float32) == "sdpa"  # the kernels need fp16/bf16
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "sdpa"


@pytest.mark.parametrize("flag, names, expected", [
    ("sage", {"sageattention", "flash_attn"}, "sage"),
    ("flash", {"flash_attn", "sageattention"}, "flash"),
    ("sdpa", {"flash_attn", "sageattention"}, "sdpa"),
    ("sage", {"flash_attn"}, "flash"),  # a flag for a kernel that is not installed falls back to the order
])
def test_a_host_flag_wins_when_usable(installed, flag, names, expected):
    installed(names)
    assert resolve_backend("auto", CUDA, torch.float16, preferred=flag) == expected
    assert auto_backend(torch.device("cpu"), torch.float16, flag) == "sdpa"
    assert resolve_backend("sdpa", CUDA, torch.float16, preferred="sage") == "sdpa"  # explicit choice wins


def test_comfy_host_reads_comfyui_flags(monkeypatch):
    import sys

    from tests.pack_loader import PACK_MODULE, load_pack  # noqa: F401  (the pack as ComfyUI loads it)

    load_pack()
    host_module = sys.modules[f"{PACK_MODULE}.nodes.host"]
    args = types.SimpleNamespace(use_pytorch_cross_attention=False)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", types.SimpleNamespace(args=args))
    mm = types.SimpleNamespace(sage_attention_enabled=lambda: False, flash_attention_enabled=lambda: False)
    host = host_module.ComfyHost(mm, None)
    assert host.attention_flag() is None
    args.use_pytorch_cross_attention = True
    assert host.attention_flag() == "sdpa"
    mm.flash_attention_enabled = lambda: True
    assert host.attention_flag() == "flash"
    mm.sage_attention_enabled = lambda: True
    assert host.attention_flag() == "sage"
    assert host_module.TorchHost().attention_flag() is None


def test_comfy_host_reads_the_fp8_matmul_flag(monkeypatch):
    import enum
    import sys

    from tests.pack_loader import PACK_MODULE, load_pack

    load_pack()
    host_module = sys.modules[f"{PACK_MODULE}.nodes.host"]

    class PerformanceFeature(enum.Enum):
        Fp16Accumulation = "fp16_accumulation"
        Fp8MatrixMultiplication = "fp8_matrix_mult"

    args = types.SimpleNamespace(fast=None)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", types.SimpleNamespace(args=args))
    host = host_module.ComfyHost(types.SimpleNamespace(), None)
    assert not host.fp8_matmul_flag()
    args.fast = {PerformanceFeature.Fp16Accumulation}
    assert not host.fp8_matmul_flag()
    args.fast = set(PerformanceFeature)  # a bare --fast enables everything
    assert host.fp8_matmul_flag()
    assert not host_module.TorchHost().fp8_matmul_flag()
