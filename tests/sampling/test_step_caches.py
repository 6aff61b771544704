"""EasyCache and the step-cache settings on a model with a velocity field that is smooth in t."""
from __future__ import annotations

import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.sampling.easycache import EasyCache, EasyCacheConfig
from infinitetalk_core.sampling.guidance import GuidanceConfig
from infinitetalk_core.sampling.sampler import sample_flow_euler
from infinitetalk_core.sampling.schedule import flow_timesteps
from infinitetalk_core.sampling.step_cache import StepCacheSettings
from infinitetalk_core.sampling.teacache import TeaCache

PASSES = ("cond", "drop_text", "uncond")


def smooth_model(calls: list):
    """v = a(t)·x + b_pass(t): smooth in t and x, different per pass, so caching has something to reuse."""
    target = torch.linspace(-1, 1, 16 * 3 * 4 * 4).reshape(16, 3, 4, 4)

    def model_fn(x, t, passes):
        calls.append((float(t), tuple(passes)))
        s = float(t) / 1000
        return {p: (x - (1 + 0.1 * i) * target) / max(s, 1e-3) * (1 - 0.3 * s) for i, p in enumerate(passes)}

    return model_fn


def run(cache=None, steps=40):
    calls = []
    model_fn = smooth_model(calls)
    if cache is not None:
        model_fn = cache.wrap(model_fn)
    noise = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x = sample_flow_euler(model_fn, noise, flow_timesteps(steps, 7.0), None, GuidanceConfig(5.0, 4.0))
    return x, calls


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def test_easycache_skips_steps_and_stays_close():
    exact, exact_calls = run()
    cache = EasyCache(EasyCacheConfig(0.2), 40)
    cached, calls = run(cache)
    assert len(exact_calls) == 40 and len(cache.log) == 40
    assert 0 < len(calls) < 40 and cache.skipped == 3 * (40 - len(calls))
    assert cache.evaluated == 120
    assert rel_l2(cached, exact) < 0.05


def test_easycache_respects_its_window_and_threshold():
    cache = EasyCache(EasyCacheConfig(0.5, start_step=10, end_step=30), 40)
    run(cache)
    assert all(cache.log[:10]) and all(cache.log[30:]) and not all(cache.log[10:30])
    tiny = EasyCache(EasyCacheConfig(1e-9), 40)
    cached, calls = run(tiny)
    assert len(calls) == 40 and tiny.skipped == 0
    assert torch.equal(cached, run()[0])  # never skipping changes nothing


def test_easycache_skipped_step_reuses_each_pass_transformation():
    cache = EasyCache(EasyCacheConfig(0.5), 40)
    model_fn = cache.wrap(smooth_model([]))
    x = torch.randn(16, 3, 4, 4)
    t = flow_timesteps(40, 7.0)
    outs = []
    for i in range(12):
        outs.append(model_fn(x + 0.001 * i, t[i : i + 1], PASSES))
    skipped = [i for i, computed in enumerate(cache.log) if not computed]
    assert skipped, cache.log
    i = skipped[0]
    last = max(j for j in range(i) if cache.log[j])
    for p in PASSES:  # v = x + (v_last − x_last), per pass
        expected = (x + 0.001 * i) + (outs[last][p] - (x + 0.001 * last))
        torch.testing.assert_close(outs[i][p], expected)


def test_easycache_is_closer_at_lower_thresholds():
    exact, _ = run()
    errors, skipped = [], []
    for threshold in (0.05, 0.2, 0.8):
        cache = EasyCache(EasyCacheConfig(threshold), 40)
        errors.append(rel_l2(run(cache)[0], exact))
        skipped.append(cache.skipped)
    assert skipped == sorted(skipped) and skipped[0] < skipped[-1]
    assert errors[0] <= errors[-1]


@pytest.mark.parametrize("method", ["teacache", "easycache"])
def test_step_cache_is_refused_on_short_or_distilled_schedules(method):
    with pytest.raises(InputValidationError, match="refused at 4 steps"):
        StepCacheSettings(method).validate(4)
    with pytest.raises(InputValidationError, match="distill"):
        StepCacheSettings(method).validate(40, "distill")
    StepCacheSettings(method).validate(40)
    StepCacheSettings("none").validate(4, "distill")


@pytest.mark.parametrize("kwargs", [dict(method="fast"), dict(method="teacache", threshold=-1),
                                    dict(method="teacache", threshold=float("nan")),
                                    dict(method="easycache", start_step=40),
                                    dict(method="easycache", start_step=20, end_step=10),
                                    dict(method="easycache", end_step=41), dict(method="teacache", start_step=-2),
                                    dict(method="teacache", resolution="1080")])
def test_bad_step_cache_settings_are_refused(kwargs):
    with pytest.raises(InputValidationError):
        StepCacheSettings(**kwargs).validate(40)


def test_defaults_and_new_state():
    assert StepCacheSettings().new_state(40) is None
    tea = StepCacheSettings("teacache", resolution="720").new_state(40)
    assert isinstance(tea, TeaCache) and tea.config.threshold == 0.2 and tea.config.resolution == "720"
    assert not tea.config.forced(5, 40) and tea.config.forced(4, 40)
    easy = StepCacheSettings("easycache", 0.1, 3, 35).new_state(40)
    assert isinstance(easy, EasyCache) and easy.config.window(40) == (3, 35)
    assert EasyCacheConfig().window(40) == (6, 38)
