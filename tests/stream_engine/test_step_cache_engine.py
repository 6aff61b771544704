"""Step caches and schedulers inside the streaming engine: counts, per-chunk state, fingerprints, resume."""
from __future__ import annotations

import pytest
import torch

from infinitetalk_core.sampling import step_cache as step_cache_module
from infinitetalk_core.sampling.guidance import GuidanceConfig
from infinitetalk_core.sampling.step_cache import StepCacheSettings
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.hooks import StreamHooks
from infinitetalk_core.stream.settings import StreamSettings


def test_settings_json_keeps_old_fingerprints_and_names_new_options():
    plain = StreamSettings().to_json()
    assert "step_cache" not in plain and "scheduler" not in plain  # job folders of earlier releases match
    cached = StreamSettings(step_cache=StepCacheSettings("teacache", 0.3)).to_json()
    assert cached["step_cache"]["method"] == "teacache" and cached["step_cache"]["threshold"] == 0.3
    assert StreamSettings(steps=4, scheduler="unipc").to_json()["scheduler"] == "unipc"
    assert cached != StreamSettings(step_cache=StepCacheSettings("easycache", 0.3)).to_json()


@pytest.mark.parametrize("method", ["teacache", "easycache"])
def test_engine_reports_calls_and_skips_per_chunk(make_inputs, method, monkeypatch):
    fresh = []
    new_state = StepCacheSettings.new_state
    monkeypatch.setattr(StepCacheSettings, "new_state", lambda self, steps: fresh.append(1) or new_state(self, steps))
    inputs = make_inputs(30, steps=12, step_cache=StepCacheSettings(method, 5.0, 2))
    plan = inputs.plan()
    chunks = []
    results = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder,
                                   hooks=StreamHooks(on_chunk=chunks.append)))
    assert len(fresh) == plan.num_chunks > 1  # a new cache state for every chunk
    assert all(r.pass_calls == 12 * 3 for r in results)
    assert [c.skipped_calls for c in chunks] == [r.skipped_calls for r in results]
    if method == "easycache":  # at threshold 5 it must skip; TeaCache's 14B coefficients need real weights
        assert all(r.skipped_calls > 0 for r in results)


def test_without_a_cache_nothing_is_skipped(make_inputs):
    inputs = make_inputs(13, steps=3)
    result = next(generate_chunks(*inputs.args(inputs.plan()), image_encoder=inputs.encoder))
    assert (result.pass_calls, result.skipped_calls) == (9, 0)


@pytest.mark.parametrize("scheduler, steps", [("unipc", 6), ("distill", 4)])
def test_schedulers_resume_bit_identically(make_inputs, scheduler, steps):
    inputs = make_inputs(30, steps=steps, scheduler=scheduler, shift=5.0, guidance=GuidanceConfig(1.0, 2.0))
    plan = inputs.plan()
    full = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    resumed = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder, state=full[0].state))
    assert len(resumed) == len(full) - 1
    for a, b in zip(resumed, full[1:]):
        assert torch.equal(a.frames, b.frames)
    euler = make_inputs(30, steps=steps, shift=5.0, guidance=GuidanceConfig(1.0, 2.0))
    other = next(generate_chunks(*euler.args(plan), image_encoder=euler.encoder))
    assert not torch.equal(other.frames, full[0].frames)


def test_distill_scheduler_draws_new_noise_per_step(make_inputs, monkeypatch):
    from infinitetalk_core.stream import generate as generate_module

    drawn = []
    real = generate_module.step_noise
    monkeypatch.setattr(generate_module, "step_noise", lambda *a, **k: drawn.append(a[1:4]) or real(*a, **k))
    inputs = make_inputs(13, steps=4, scheduler="distill", guidance=GuidanceConfig(1.0, 1.0))
    next(generate_chunks(*inputs.args(inputs.plan()), image_encoder=inputs.encoder))
    assert drawn == [(7, 0, 0), (7, 0, 1), (7, 0, 2)]  # (seed, chunk, step): no noise after the last step


def test_step_cache_on_distill_is_refused_before_any_work(make_inputs):
    with pytest.raises(step_cache_module.InputValidationError, match="refused"):
        make_inputs(13, steps=4, scheduler="distill", step_cache=StepCacheSettings("teacache")).settings.validate()


def test_teacache_survives_the_out_of_memory_fallback(make_inputs, monkeypatch):
    """A batched forward that runs out of memory is retried pass by pass; TeaCache must decide that step
    once, not twice (its state is rolled back before the retry)."""
    from infinitetalk_core.sampling.teacache import TeaCache

    logs = []
    real_init = TeaCache.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        logs.append(self)

    monkeypatch.setattr(TeaCache, "__init__", keep)

    class OOMOnce(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.failed = inner, False

        def forward(self, x, *args, **kwargs):
            if x.shape[0] > 1 and not self.failed:
                self.failed = True
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x, *args, **kwargs)

        def step_cache_indicator(self, *args, **kwargs):
            return self.inner.step_cache_indicator(*args, **kwargs)

    cache = StepCacheSettings("teacache", 5.0)
    inputs = make_inputs(13, steps=12, step_cache=cache)
    plan = inputs.plan()
    flaky = OOMOnce(inputs.model)
    result = next(generate_chunks(flaky, *inputs.args(plan)[1:], image_encoder=inputs.encoder))
    assert flaky.failed and len(logs[0].log) == 12 * 3  # every pass decided once per step
    expected = next(generate_chunks(*make_inputs(13, steps=12, step_cache=cache, batch_passes=False).args(plan),
                                    image_encoder=inputs.encoder))
    torch.testing.assert_close(result.frames, expected.frames, atol=1e-4, rtol=1e-4)
