"""Timesteps, guidance (CFG / APG) and the Euler loop against the reference's golden trajectories."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.sampling.guidance import (
    APGState,
    GuidanceConfig,
    apg_update,
    combine_guidance,
    guidance_passes,
    guide_cfg,
)
from infinitetalk_core.sampling.sampler import euler_step, sample_flow_euler
from infinitetalk_core.sampling.schedule import flow_sigmas, flow_timesteps, step_sizes

MODES = {
    "cfg_text5_audio4": GuidanceConfig(5.0, 4.0, use_apg=False),
    "cfg_text1_audio2": GuidanceConfig(1.0, 2.0, use_apg=False),
    "apg_text5_audio4": GuidanceConfig(5.0, 4.0, use_apg=True),
    "apg_text1_audio2": GuidanceConfig(1.0, 2.0, use_apg=True),
}
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def schedule_json(golden_dir):
    return json.loads((golden_dir / "schedule" / "schedule.json").read_text())


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(str(golden_dir / "schedule" / "schedule.safetensors"))


def test_golden_timesteps(schedule_json):
    for case in schedule_json["schedules"]:
        t = flow_timesteps(case["steps"], case["shift"])
        assert t.dtype == torch.float32 and t.shape == (case["steps"] + 1,)
        torch.testing.assert_close(t, torch.tensor(case["timesteps"]), atol=1e-4, rtol=1e-6)
        torch.testing.assert_close(step_sizes(t), torch.tensor(case["dt"]), atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(flow_sigmas(t).double(), torch.tensor(case["sigmas"], dtype=torch.float64),
                                   atol=1e-7, rtol=0)
        assert t[0] == 1000 and t[-1] == 0


@pytest.mark.parametrize(
    "steps, shift", [(0, 7), (1001, 7), (4.0, 7), (True, 7), (40, 0), (40, -1), (40, "7")]
)
def test_invalid_schedule(steps, shift):
    with pytest.raises(InputValidationError):
        flow_timesteps(steps, shift)


@pytest.mark.parametrize("mode", list(MODES))
def test_golden_trajectory(mode, golden, schedule_json):
    config, info = MODES[mode], schedule_json["trajectories"]
    timesteps = flow_timesteps(info["steps"], info["shift"])
    torch.testing.assert_close(timesteps, torch.tensor(info["modes"][mode]["timesteps"]), atol=1e-4, rtol=0)
    seen_inputs, calls = [], []

    def model_fn(x, t, passes):
        step = len(seen_inputs)
        seen_inputs.append(x.clone())
        calls.append(tuple(passes))
        assert t.shape == (1,) and t.dtype == torch.float32 and t.item() == timesteps[step].item()
        return {name: golden[f"v.step{step}.{name}"] for name in passes}

    records = []
    x0 = sample_flow_euler(model_fn, golden[f"{mode}.x_in.step0"], timesteps, golden["context_latent"],
                           config, callback=records.append)
    assert calls == [tuple(info["modes"][mode]["branch_order_per_step"])] * info["steps"]
    for i, rec in enumerate(records):
        assert (rec["step"], rec["total"]) == (i, info["steps"])
        torch.testing.assert_close(seen_inputs[i], golden[f"{mode}.x_in.step{i}"], **TOL)
        torch.testing.assert_close(rec["v"], golden[f"{mode}.v_guided.step{i}"], **TOL)
        if config.use_apg:
            expected = {k: golden[f"{mode}.apg_{k}.step{i}"] for k in ("text", "audio")
                        if f"{mode}.apg_{k}.step{i}" in golden}
            assert set(rec["guidance_terms"]) == set(expected)
            for k, v in expected.items():
                torch.testing.assert_close(rec["guidance_terms"][k], v, **TOL)
    torch.testing.assert_close(x0, golden[f"{mode}.x0"], **TOL)


def test_apg_buffer_keeps_unclipped_average(golden, schedule_json):
    """The running norms in the JSON are those of the unclipped momentum averages."""
    norms = schedule_json["trajectories"]["modes"]["apg_text5_audio4"]["apg_running_norms"]
    state = APGState()
    for i, expected in enumerate(norms):
        preds = {k: golden[f"v.step{i}.{k}"] for k in ("cond", "drop_text", "uncond")}
        _, state, _ = combine_guidance(preds, MODES["apg_text5_audio4"], state)
        assert state.text.norm().item() == pytest.approx(expected["text_running_norm"], rel=1e-5)
        assert state.audio.norm().item() == pytest.approx(expected["audio_running_norm"], rel=1e-5)
    assert norms[0]["text_running_norm"] > 55  # so the clip was active and did not leak into the buffer


def test_passes_needed():
    assert guidance_passes(5, 4) == ("cond", "drop_text", "uncond")
    assert guidance_passes(1, 2) == ("cond", "drop_audio")
    assert guidance_passes(5, 1) == ("cond", "drop_text")
    assert guidance_passes(1, 1) == ("cond",)
    assert guidance_passes(1.0 + 1e-12, 1) == ("cond",)  # math.isclose, as the reference
    assert guidance_passes(5, 1, reference_passes=True) == ("cond", "drop_text", "uncond")
    assert guidance_passes(1, 1, reference_passes=True) == ("cond", "drop_audio")


def _random_preds(shape=(16, 3, 2, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k in ("cond", "drop_text", "uncond", "drop_audio")}


@pytest.mark.parametrize("use_apg", [False, True])
def test_shortcut_passes_equal_the_reference_formulas(use_apg):
    preds = _random_preds()
    one, _, _ = combine_guidance(preds, GuidanceConfig(1.0, 1.0, use_apg=use_apg))
    assert one is preds["cond"]
    ref_one, _, _ = combine_guidance(preds, GuidanceConfig(1.0, 1.0, use_apg=use_apg, reference_passes=True))
    torch.testing.assert_close(one, ref_one, atol=1e-6, rtol=0)
    short, _, _ = combine_guidance(preds, GuidanceConfig(5.0, 1.0, use_apg=use_apg))
    full, _, _ = combine_guidance(preds, GuidanceConfig(5.0, 1.0, use_apg=use_apg, reference_passes=True))
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-6)


def test_cfg_identities():
    p = _random_preds()
    c, t, u = p["cond"], p["drop_text"], p["uncond"]
    torch.testing.assert_close(guide_cfg(c, t, u, 1.0, 1.0), c)
    torch.testing.assert_close(guide_cfg(c, t, u, 0.0, 0.0), u)
    torch.testing.assert_close(guide_cfg(c, t, u, 3.0, 2.0), u + 3 * (c - t) + 2 * (t - u))


def test_apg_projection_is_orthogonal_and_clipped():
    p = _random_preds(seed=3)
    diff = 100 * (p["cond"] - p["drop_text"])
    term, running = apg_update(diff, p["cond"], None, norm_threshold=55.0)
    assert torch.equal(running, diff)
    assert abs(float((term.double() * p["cond"].double()).sum())) < 1e-3
    assert term.norm() <= 55.0 + 1e-3
    term2, running2 = apg_update(diff, p["cond"], running, momentum=-0.75)
    torch.testing.assert_close(running2, diff - 0.75 * diff)
    # batched samples are normalised independently
    batched, _ = apg_update(torch.stack([diff, diff / 100]), torch.stack([p["cond"]] * 2), None)
    torch.testing.assert_close(batched[0], term)


def test_missing_pass_is_a_clear_error():
    preds = _random_preds()
    del preds["uncond"]
    with pytest.raises(InputValidationError, match="uncond"):
        combine_guidance(preds, GuidanceConfig(5.0, 4.0))


@pytest.mark.parametrize(
    "kwargs",
    [dict(text_scale=-1), dict(audio_scale=31), dict(text_scale=float("nan")), dict(apg_momentum=-1.0),
     dict(apg_norm_threshold=-5), dict(audio_scale="4")],
)
def test_invalid_guidance_config(kwargs):
    with pytest.raises(InputValidationError):
        GuidanceConfig(**kwargs)


def test_context_latents_stay_clean_and_batches_work():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 16, 5, 4, 6, generator=g)
    context = torch.randn(2, 16, 2, 4, 6, generator=g)
    seen = []

    def model_fn(x, t, passes):
        seen.append(x[:, :, :2].clone())
        return {name: torch.full_like(x, 0.5) for name in passes}

    out = sample_flow_euler(model_fn, noise, flow_timesteps(4, 5.0), context, GuidanceConfig(1.0, 1.0))
    assert all(torch.equal(s, context) for s in seen) and len(seen) == 4
    assert torch.equal(out[:, :, :2], context)
    # constant velocity 0.5 over σ from 1 to 0: x_0 = x_1 − 0.5 on the free frames
    torch.testing.assert_close(out[:, :, 2:], noise[:, :, 2:] - 0.5, atol=1e-5, rtol=0)
    assert not torch.equal(noise[:, :, :2], context)  # the caller's noise is not modified


def test_denoised_estimate_and_interrupt():
    x0_true = torch.randn(16, 3, 2, 2)
    eps = torch.randn(16, 3, 2, 2)

    def model_fn(x, t, passes):  # the exact velocity of a straight path
        return {"cond": eps - x0_true}

    steps = []

    def callback(info):
        torch.testing.assert_close(info["denoised"], x0_true, atol=1e-5, rtol=1e-5)
        steps.append(info["step"])
        if info["step"] == 1:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        sample_flow_euler(model_fn, eps, flow_timesteps(5, 3.0), None, GuidanceConfig(1.0, 1.0), callback)
    assert steps == [0, 1]
    out = sample_flow_euler(model_fn, eps, flow_timesteps(5, 3.0), None, GuidanceConfig(1.0, 1.0))
    torch.testing.assert_close(out, x0_true, atol=1e-5, rtol=1e-5)


def test_euler_step_matches_reference_sign_convention():
    x, v = torch.randn(16, 2, 2, 2), torch.randn(16, 2, 2, 2)
    t, t_next = torch.tensor([875.2185668945312]), torch.tensor([6.958250522613525])
    dt = (t - t_next) / 1000
    assert torch.equal(euler_step(x, v, t, t_next), x + (-v) * dt)


@pytest.mark.parametrize(
    "noise, timesteps, context, match",
    [
        (torch.zeros(16, 5, 4), flow_timesteps(2, 5.0), None, "noise"),
        (torch.zeros(16, 5, 4, 4), torch.zeros(1), None, "timesteps"),
        (torch.zeros(16, 5, 4, 4), flow_timesteps(2, 5.0), torch.zeros(16, 6, 4, 4), "context"),
        (torch.zeros(16, 5, 4, 4), flow_timesteps(2, 5.0), torch.zeros(8, 1, 4, 4), "context"),
    ],
)
def test_invalid_sampler_inputs(noise, timesteps, context, match):
    with pytest.raises(InputValidationError, match=match):
        sample_flow_euler(lambda x, t, p: {}, noise, timesteps, context)
