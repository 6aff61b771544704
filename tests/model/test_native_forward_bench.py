"""bench/native_forward.py: the helpers that map our DiT's config, weights and inputs to ComfyUI's native
WanModel work on our side (no ComfyUI needed); with COMFYUI_DIR set, a tiny end-to-end comparison."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from infinitetalk_core.model.config import AudioConfig, DiTConfig

REPO = Path(__file__).resolve().parents[2]
TINY = DiTConfig(dim=64, ffn_dim=128, num_layers=2, num_heads=2, text_dim=32, text_len=256, audio=None)
NAMES = ("x", "t", "context", "clip_fea", "y")


@pytest.fixture(scope="module")
def nf():
    spec = importlib.util.spec_from_file_location("bench_native_forward", REPO / "bench" / "native_forward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inputs():
    spec = importlib.util.spec_from_file_location("bench_dit_forward_nf", REPO / "bench" / "dit_forward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(3)
    return module.random_inputs(TINY, 32, 48, 5, 1, 1, torch.device("cpu"), torch.float32)


def test_config_mapping(nf):
    kw = nf.native_kwargs(TINY)
    assert kw["model_type"] == "i2v" and kw["in_dim"] == 36 and kw["out_dim"] == 16
    assert (kw["dim"], kw["ffn_dim"], kw["num_layers"], kw["num_heads"]) == (64, 128, 2, 2)
    assert (kw["text_dim"], kw["text_len"], kw["freq_dim"], kw["patch_size"]) == (32, 256, 256, (1, 2, 2))
    assert kw["qk_norm"] and kw["cross_attn_norm"] and kw["eps"] == TINY.eps
    with pytest.raises(ValueError, match="audio=None"):
        nf.native_kwargs(dataclasses.replace(TINY, audio=AudioConfig()))
    with pytest.raises(ValueError, match="1280"):
        nf.native_kwargs(dataclasses.replace(TINY, clip_dim=64))
    cfg = nf.bench_config(512, 4, 8)
    assert (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads, cfg.audio) == (512, 2048, 4, 8, None)


def test_random_weights_and_native_state_dict(nf):
    model = nf.build_ours(TINY, torch.bfloat16)
    state = model.state_dict()
    assert not any(k.startswith("audio") or ".audio_" in k or ".norm_x." in k for k in state)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    norm = state["blocks.0.self_attn.norm_q.weight"].float()
    assert not torch.allclose(norm, torch.ones_like(norm))  # noise on the norms: a mis-mapped key would show
    theirs = nf.native_state_dict(state)
    assert theirs.keys() == state.keys()
    assert theirs["patch_embedding.weight"].dtype == torch.float32  # native keeps its patch embedding fp32
    assert theirs["patch_embedding.bias"].dtype == torch.float32
    assert theirs["blocks.1.ffn.0.weight"] is state["blocks.1.ffn.0.weight"]


def test_native_inputs_layout_round_trips_through_ours(nf, inputs):
    """native_inputs' [x | y] and zero-padded context, split back and fed to ours, give ours' own output."""
    ninp = nf.native_inputs(inputs, TINY, torch.float32)
    x = ninp["x"]
    assert x.shape == (1, 36, *inputs["x"].shape[2:])
    assert torch.equal(x[:, :16], inputs["x"]) and torch.equal(x[:, 16:], inputs["y"])
    tokens = inputs["context"][0].shape[0]
    assert ninp["context"].shape == (1, TINY.text_len, TINY.text_dim)
    assert torch.equal(ninp["context"][0, :tokens], inputs["context"][0])
    assert not ninp["context"][0, tokens:].any()
    assert ninp["timestep"].shape == (1,) and ninp["clip_fea"].shape == (1, 257, 1280)
    model = nf.build_ours(TINY, torch.float32)
    with torch.inference_mode():
        direct = model(*(inputs[n] for n in NAMES))
        via_native = model(x[:, :16], ninp["timestep"], ninp["context"], ninp["clip_fea"], x[:, 16:])
    torch.testing.assert_close(via_native, direct, rtol=0, atol=0)
    bf16 = nf.native_inputs(inputs, TINY, torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in bf16.values())


def test_share_weights_twin_uses_the_same_tensors(nf, inputs):
    from infinitetalk_core.model.dit import InfiniteTalkDiT

    model = nf.build_ours(TINY, torch.float32)
    state = model.state_dict()
    twin = nf.share_weights(lambda: InfiniteTalkDiT(TINY), state)
    assert all(p.data_ptr() == state[k].data_ptr() for k, p in twin.state_dict().items())
    with torch.inference_mode():
        torch.testing.assert_close(twin(*(inputs[n] for n in NAMES)), model(*(inputs[n] for n in NAMES)),
                                   rtol=0, atol=0)


def test_condition_cache_variant_gives_the_same_output(nf, inputs):
    """The "ours + ConditionCache" variant reuses the text / CLIP embeddings across calls, output unchanged."""
    memo = nf.condition_cache()
    if memo is None:
        pytest.skip("this DiT's forward takes no condition_cache")
    model = nf.build_ours(TINY, torch.float32)
    with torch.inference_mode():
        plain = model(*(inputs[n] for n in NAMES))
        first, second = (model(*(inputs[n] for n in NAMES), condition_cache=memo) for _ in range(2))
    torch.testing.assert_close(first, plain, rtol=0, atol=0)
    torch.testing.assert_close(second, plain, rtol=0, atol=0)


def test_interleaved_medians_order_and_warmup(nf):
    calls, now = [], [0.0]
    cost = {"a": 1.0, "b": 2.0, "c": 4.0}

    def make(name):
        def fn():
            calls.append(name)
            now[0] += cost[name] + len(calls) * 0.001  # a slow drift
        return fn

    # a fake /proc: other processes keep both CPUs busy during the calls of "c", never during "a" and "b"
    jiffies = {"busy": 0, "own": 0}

    def snapshot():
        busy_for_4s = int((os.cpu_count() or 1) * os.sysconf("SC_CLK_TCK") * 4.0)
        jiffies["busy"] += busy_for_4s if calls[-1:] == ["c"] else 0
        return jiffies["busy"], jiffies["own"]

    calls.append("start")
    out = nf.interleaved_medians({n: make(n) for n in cost}, warmup=1, repeats=3, clock=lambda: now[0],
                                 snapshot=snapshot, threads=os.cpu_count())
    calls.remove("start")
    assert calls == list("abc" "cba" "abc" "cba")
    assert [len(v["times"]) for v in out.values()] == [3, 3, 3]  # the warm-up round is not timed
    assert [round(v["median"]) for v in out.values()] == [1, 2, 4]
    assert all(v["min"] <= v["median"] for v in out.values())
    assert [v["quiet"] for v in out.values()] == [3, 3, 0]
    assert round(out["a"]["quiet_median"]) == 1 and out["c"]["quiet_median"] is None
    assert out["a"]["other"] == [0.0] * 3 and min(out["c"]["other"]) > 0.9


def test_markdown_and_unset_comfyui_dir(nf, monkeypatch):
    result = dict(config=dict(dim=64, ffn_dim=128, layers=2, heads=2, video="5×32×48", tokens=18,
                              dtype="float32", threads=2),
                  missing=[], unexpected=[], max_abs_diff={"ours eager": 1e-6}, out_max_abs=2.0,
                  seconds={"ours eager": 1.0, "native eager": 1.25}, min_seconds={"ours eager": 0.9,
                  "native eager": 1.0}, quiet_seconds={"ours eager": 0.95, "native eager": None},
                  quiet_runs={"ours eager": 2, "native eager": 0}, other_load={"ours eager": [0.0, 0.01],
                  "native eager": [0.5, None]}, times={"ours eager": [1.0, 0.9], "native eager": [1.25, 1.0]},
                  ratios={"ours/native eager": (0.8, 0.9, None)})
    text = nf.markdown(result)
    assert "0 missing, 0 unexpected" in text and "| ours/native eager | 0.800 | 0.900 | – |" in text
    assert "| native eager | 1.250 | 1.000 | – (0) | 1.250 (50%) 1.000 | – |" in text
    assert "| ours eager | 1.000 | 0.900 | 0.950 (2) | 1.000 (0%) 0.900 (1%) |" in text
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    assert "COMFYUI_DIR" in nf.import_native()
    with pytest.raises(RuntimeError, match="COMFYUI_DIR"):
        nf.compare(TINY, 32, 32, 5)


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="COMFYUI_DIR not set (ComfyUI's WanModel)")
def test_tiny_comparison_against_comfyui(nf):
    native = nf.import_native()
    if isinstance(native, str):
        pytest.skip(native)
    result = nf.compare(TINY, 32, 32, 5, torch.float32, warmup=1, repeats=1)
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["max_abs_diff"]["ours eager"] < 1e-4
    assert {"ours eager", "native eager"} <= set(result["seconds"])
    if "ours eager + ConditionCache" in result["seconds"]:
        assert result["max_abs_diff"]["ours eager + ConditionCache"] < 1e-4
