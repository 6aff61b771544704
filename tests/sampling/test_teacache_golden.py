"""TeaCache against the reference's own TeaCache runs (../shared/golden/teacache, README "teacache/").

The engine's model function (stream.model_fn with a TeaCache) drives the golden tiny DiT through the
Euler sampler; every call's decision must equal the reference's exactly, its distances and outputs
within the fixture's suggested tolerance, and the trajectory must follow x_in / x0.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.model.dit import InfiniteTalkDiT
from infinitetalk_core.model.config import detect_dit_config
from infinitetalk_core.sampling.guidance import GuidanceConfig, guidance_passes
from infinitetalk_core.sampling.sampler import sample_flow_euler
from infinitetalk_core.sampling.teacache import TeaCache, TeaCacheConfig, TeaSlot, teacache_decide
from infinitetalk_core.stream.model_fn import make_model_fn

THREE_PASS = ["s40_sh7_480_th0p2", "s40_sh7_480_th0p5", "s40_sh11_720_th0p2", "s40_sh11_720_th0p5",
              "s8_sh2_480_th0p5", "s8_sh2_480_th0p5_noret"]
TWO_PASS = "twopass_s40_sh7_480_th0p2"
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fixture(golden_dir):
    meta = json.loads((golden_dir / "teacache" / "teacache.json").read_text())
    return meta, load_file(str(golden_dir / "teacache" / "teacache.safetensors"))


@pytest.fixture(scope="module")
def model(golden_dir, fixture):
    state = load_file(str(golden_dir / "dit" / "model_full.safetensors"))
    state["time_embedding.0.weight"] = fixture[1]["weights.time_embedding.0.weight"]
    heads = json.loads((golden_dir / "dit" / "model.json").read_text())["config"]["num_heads"]
    dit = InfiniteTalkDiT(detect_dit_config({k: v.shape for k, v in state.items()}, num_heads=heads)).eval()
    dit.load_state_dict(state, strict=True)
    return dit


def config_for(case: dict) -> TeaCacheConfig:
    return TeaCacheConfig(case["teacache_thresh"], case["model_scale"].rsplit("-", 1)[1], case["use_ret_steps"])


def run_case(model, tensors, case: dict, name: str, batch_passes: bool = False):
    """Sample one chunk with TeaCache; returns (cache, [(x, {pass: v})] per step, x0)."""
    cache = TeaCache(config_for(case), case["sample_steps"])
    model_fn = make_model_fn(model, tensors["y"][0], tensors["clip_fea"], tensors["audio"],
                             tensors["context"], tensors["context_null"], tensors["ref_target_masks"],
                             batch_passes, teacache=cache)
    calls = []

    def recording(x, t, passes):
        out = model_fn(x, t, passes)
        calls.append((x.clone(), out))
        return out

    guidance = GuidanceConfig(case["text_guide_scale"], case["audio_guide_scale"])
    assert list(guidance_passes(guidance.text_scale, guidance.audio_scale)) == case["branch_order"]
    with torch.no_grad():
        x0 = sample_flow_euler(recording, tensors[f"{name}.x_in"][0], torch.tensor(case["timesteps"]),
                               tensors["context_latent"], guidance)
    return cache, calls, x0


def assert_decisions_match(cache: TeaCache, calls: dict, first: int = 0, count: int | None = None):
    count = len(calls["computed"]) if count is None else count
    for k in range(first, first + count):
        branch, decision = cache.log[k]
        assert branch == calls["branch"][k], k
        assert (decision.forced, decision.computed) == (calls["forced"][k], calls["computed"][k]), k
        if not decision.forced:
            assert decision.rel_l1 == pytest.approx(calls["rel_l1"][k], rel=2e-4), k
            assert decision.rescaled == pytest.approx(calls["rescaled"][k], rel=5e-4, abs=1e-4), k
            assert decision.accumulated == pytest.approx(calls["accumulated"][k], rel=5e-4, abs=1e-4), k
            assert decision.accumulator_after == pytest.approx(calls["accumulator_after"][k], rel=5e-4, abs=1e-4)


@pytest.mark.parametrize("name", THREE_PASS)
def test_three_pass_matches_reference(model, fixture, name):
    meta, tensors = fixture
    case = meta["cases"][name]
    cache, calls, x0 = run_case(model, tensors, case, name)
    assert_decisions_match(cache, case["calls"])
    assert cache.skipped == case["counts"]["skipped"] and cache.evaluated == len(case["calls"]["computed"])
    for i, (x, out) in enumerate(calls):
        torch.testing.assert_close(x, tensors[f"{name}.x_in"][i], **TOL)
        for j, branch in enumerate(case["branch_order"]):
            torch.testing.assert_close(out[branch], tensors[f"{name}.out"][i, j], **TOL)
    torch.testing.assert_close(x0, tensors[f"{name}.x0"], **TOL)


def test_batched_passes_give_the_same_run(model, fixture):
    meta, tensors = fixture
    name = "s40_sh7_480_th0p2"
    cache, _, x0 = run_case(model, tensors, meta["cases"][name], name, batch_passes=True)
    assert_decisions_match(cache, meta["cases"][name]["calls"])
    torch.testing.assert_close(x0, tensors[f"{name}.x0"], **TOL)


def replay_decisions(model, case: dict, passes: list[str]) -> list:
    """Decisions of one chunk from the indicators alone (no blocks), with a fresh state."""
    config, steps, slots, out = config_for(case), case["sample_steps"], {}, []
    for step, t in enumerate(case["timesteps"][:-1]):
        indicator = model.step_cache_indicator(torch.tensor([t]), torch.zeros(1), config.use_ret_steps)
        for name in passes:
            decision, slot = teacache_decide(slots.get(name, TeaSlot()), indicator, step, steps, config)
            slots[name] = slot if slot.residual is not None else TeaSlot(slot.previous, slot.accumulator,
                                                                           torch.zeros(1))
            out.append((name, decision.forced, decision.computed))
    return out


def test_second_chunk_repeats_the_first(model, fixture):
    meta, _ = fixture
    case = meta["cases"]["s40_sh7_480_th0p2"]
    second = case["second_chunk"]
    with torch.no_grad():
        ours = replay_decisions(model, case, case["branch_order"])
    assert second["identical_to_first_chunk"]
    assert [c for _, _, c in ours] == second["calls"]["computed"]
    assert [f for _, f, _ in ours] == second["calls"]["forced"]
    assert [n for n, _, _ in ours] == second["calls"]["branch"]


def test_two_pass_keys_by_pass_name_and_resets_per_chunk(model, fixture):
    """The reference rotates 3 slots over 2 passes and carries its counter into chunk 2; we do not."""
    meta, tensors = fixture
    case = meta["cases"][TWO_PASS]
    cache, calls, _ = run_case(model, tensors, case, TWO_PASS)
    patterns = {p: "".join("F" if d.forced else "C" if d.computed else "s"
                           for n, d in cache.log if n == p) for p in ("cond", "drop_audio")}
    assert patterns["cond"] == patterns["drop_audio"]  # same indicator, same own slot, same decisions
    assert patterns["cond"].startswith("FFFFF") and patterns["cond"][5] != "F"
    assert patterns["cond"] != case["pattern_per_branch"]["cond"]  # the documented difference
    last_computed = {}
    for step, (_, out) in enumerate(calls):  # a skipped pass reuses its own last computed residual
        for name in ("cond", "drop_audio"):
            decision = [d for n, d in cache.log if n == name][step]
            if decision.computed:
                last_computed[name] = step
            else:
                assert last_computed[name] <= step
    # every call of the first 5 steps is forced in both, so the trajectories agree until step 5
    for i in range(5):
        torch.testing.assert_close(calls[i][0], tensors[f"{TWO_PASS}.x_in"][i], **TOL)
        for j, branch in enumerate(case["branch_order"]):
            torch.testing.assert_close(calls[i][1][branch], tensors[f"{TWO_PASS}.out"][i, j], **TOL)
    with torch.no_grad():
        second = replay_decisions(model, case, case["branch_order"])
    assert "".join("F" if f else "C" if c else "s" for n, f, c in second if n == "cond") == patterns["cond"]
    # the reference's chunk 2 starts mid-counter (no warm-up at its start), ours starts fresh
    assert not case["second_chunk"]["identical_to_first_chunk"]
    assert not case["second_chunk"]["pattern_per_branch"]["cond"].startswith("FFFFF")


def test_skipped_call_reuses_residual_of_its_pass(model, fixture):
    meta, tensors = fixture
    name = "s40_sh7_480_th0p5"
    case = meta["cases"][name]
    cache, calls, _ = run_case(model, tensors, case, name)
    sources = dict(zip(case["skipped_calls"], case["residual_source_call"]))
    computed = [k for k, (_, d) in enumerate(cache.log) if d.computed]
    for k, (branch, decision) in enumerate(cache.log):
        if not decision.computed:
            mine = max(c for c in computed if c < k and cache.log[c][0] == branch)
            assert mine == sources[k]
