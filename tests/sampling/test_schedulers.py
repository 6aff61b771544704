"""The step-distill sampler (LightX2V) and UniPC (Wan 2.1's FlowUniPC) on toy models with known answers.

Toy problems (σ = t/1000, x_σ = (1 − σ)·x0 + σ·ε, v = ε − x0):
- point mass x0*: the exact velocity is v = (x − x0*)/σ, so every x0 estimate is x0* and any
  consistent sampler must end exactly there;
- Gaussian data x0 ~ N(μ, s²) per element: x_σ ~ N((1 − σ)μ, V), V = (1 − σ)²s² + σ², and the exact
  velocity E[ε − x0 | x] = (σ − (1 − σ)s²)/V · (x − (1 − σ)μ) − μ is linear in x. The probability-flow
  ODE keeps z = (x − (1 − σ)μ)/√V fixed, so from x at σ0 it ends at x0 = μ + s·z (closed form).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.sampling import (
    GuidanceConfig,
    chunk_noise,
    chunk_seed,
    distill_timesteps,
    sample_flow_distill,
    sample_flow_euler,
    sample_flow_unipc,
    step_noise,
    step_seed,
    unipc_timesteps,
)
from infinitetalk_core.sampling.unipc import UNIPC_SIGMA_MAX

ONE_PASS = GuidanceConfig(1.0, 1.0)
SHAPE = (1, 4, 3, 4, 4)  # [B, C, T, h, w]; a batch dim so diffusers' einsum layout works too
KEYS = {"step", "total", "t", "x_in", "x", "v", "denoised", "guidance_terms"}


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _point_mass_model(x0_star):
    def model_fn(x, t, passes):
        sigma = t.double().item() / 1000
        return {name: ((x.double() - x0_star.double()) / sigma).float() for name in passes}
    return model_fn


class Gaussian:
    """Per-element Gaussian data N(μ, s²) with its exact velocity and ODE solution (float64 maths)."""

    def __init__(self, seed=0, wiggle=0.0):
        self.mu = _randn(*SHAPE, seed=seed, dtype=torch.float64)
        uniform = torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        self.s = 0.5 + uniform
        self.wiggle = wiggle  # > 0 adds a non-linear term (parity runs: not an exact velocity then)

    def variance(self, sigma):
        return (1 - sigma) ** 2 * self.s ** 2 + sigma ** 2

    def model_fn(self, x, t, passes):
        sigma, x64 = t.double().item() / 1000, x.double()
        slope = (sigma - (1 - sigma) * self.s ** 2) / self.variance(sigma)
        v = slope * (x64 - (1 - sigma) * self.mu) - self.mu
        v = v + self.wiggle * torch.sin(3 * x64)
        return {name: v.float() for name in passes}

    def exact(self, x_start, sigma_start):
        z = (x_start.double() - (1 - sigma_start) * self.mu) / self.variance(sigma_start).sqrt()
        return self.mu + self.s * z


def _error(out, reference):
    return (out.double() - reference).abs().max().item()


# ---------------------------------------------------------------------------------------------
# step noise


def test_step_noise_is_regenerable_and_its_own_draw():
    shape = (4, 3, 2, 2)
    a = step_noise(shape, 42, 1, 0)
    assert torch.equal(a, step_noise(shape, 42, 1, 0)) and a.dtype == torch.float32
    draws = [step_noise(shape, 42, k, s) for k in range(3) for s in range(4)]
    draws += [chunk_noise(shape, 42, k) for k in range(6)]
    for i in range(len(draws)):  # every (chunk, step) draw differs from every chunk's noise and each other
        assert all(not torch.equal(draws[i], draws[j]) for j in range(i + 1, len(draws)))
    seeds = {step_seed(7, k, s) for k in range(50) for s in range(50)}
    assert len(seeds) == 2500 and all(0 <= s < 2**63 for s in seeds)
    assert all(step_seed(7, 0, s) != chunk_seed(7, s + 1) for s in range(50))  # chunk 0 is the seed itself
    # pinned: a resumed or re-rendered chunk must redraw exactly the noise of the first run
    assert (step_seed(7, 0, 0), step_seed(7, 3, 2)) == (6930900260859629418, 3539042714721109240)
    half = step_noise(shape, 42, 1, 0, dtype=torch.bfloat16)
    assert torch.equal(half, a.to(torch.bfloat16))


@pytest.mark.parametrize("step", [-1, 1.0, True, "0"])
def test_step_noise_rejects_bad_steps(step):
    with pytest.raises(InputValidationError):
        step_noise((2, 2), 1, 0, step)


# ---------------------------------------------------------------------------------------------
# step-distill


def test_distill_timesteps_match_lightx2v():
    # LightX2V: σ table linspace(1, 0, 1001)[:-1] at 1000 − [1000, 750, 500, 250] -> 1, .75, .5, .25,
    # shifted 5σ/(1 + 4σ) -> 1, 0.9375, 0.8333.., 0.625 (float32), times 1000; then the final 0.
    t = distill_timesteps(4, 5.0)
    assert t.dtype == torch.float32
    assert torch.equal(t, torch.tensor([1000.0, 937.5, 833.33331298828125, 625.0, 0.0]))
    assert torch.equal(distill_timesteps(4), t)
    assert torch.equal(distill_timesteps(1), torch.tensor([1000.0, 0.0]))
    # 8 steps = LightX2V with denoising_step_list [1000, 875, ..., 125] (its table, not 1 − k/8)
    table = torch.linspace(1.0, 0.0, 1001)[:-1][[1000 - step for step in range(1000, 0, -125)]]
    expected = torch.cat([5 * table / (1 + 4 * table) * 1000, torch.zeros(1)])
    assert torch.equal(distill_timesteps(8, 5.0), expected)


@pytest.mark.parametrize(
    "steps, shift", [(0, 5), (51, 5), (4.0, 5), (True, 5), (4, 0), (4, -1), (4, "5"), (4, 101)]
)
def test_distill_timesteps_reject_bad_input(steps, shift):
    with pytest.raises(InputValidationError):
        distill_timesteps(steps, shift)


def test_distill_update_rule_and_callback():
    """x0 = x − σ_i·v; x ← (1 − σ_{i+1})·x0 + σ_{i+1}·ε_i; the last step returns x0."""
    t = distill_timesteps(4)
    noise = _randn(*SHAPE, seed=3)

    def model_fn(x, t_, passes):
        return {"cond": torch.sin(x) + t_ / 1000}

    def eps(i):
        return step_noise(SHAPE, 9, 2, i)

    records = []
    out = sample_flow_distill(model_fn, noise, t, step_noise=eps, callback=records.append)
    x, sigmas = noise.clone(), t / 1000
    for i in range(4):
        assert set(records[i]) == KEYS and records[i]["step"] == i and records[i]["total"] == 4
        assert torch.equal(records[i]["x_in"], x)
        x0 = x - sigmas[i : i + 1] * model_fn(x, t[i : i + 1], ("cond",))["cond"]
        assert torch.equal(records[i]["denoised"], x0)
        x = x0 if i == 3 else (1 - sigmas[i + 1 : i + 2]) * x0 + sigmas[i + 1 : i + 2] * eps(i)
    assert torch.equal(out, x) and torch.equal(records[-1]["x"], out)


def _on_straight_path(records, x0_star, eps_of_step, atol):
    """Every model input is (1 − σ)·x0* + σ·ε for the noise ε in force at that step."""
    for r in records:
        sigma = r["t"].double() / 1000
        expected = (1 - sigma) * x0_star.double() + sigma * eps_of_step(r["step"]).double()
        torch.testing.assert_close(r["x_in"].double(), expected, atol=atol, rtol=0)


def test_distill_point_mass_is_exact():
    x0_star, noise = _randn(*SHAPE, seed=4), _randn(*SHAPE, seed=5)

    def eps(i):
        return step_noise(SHAPE, 1, 0, i)

    for steps in (1, 4, 8):
        records = []
        out = sample_flow_distill(_point_mass_model(x0_star), noise, distill_timesteps(steps),
                                  step_noise=eps, callback=records.append)
        torch.testing.assert_close(out, x0_star, atol=1e-6, rtol=0)
        _on_straight_path(records, x0_star, lambda i: noise if i == 0 else eps(i - 1), atol=1e-5)


def test_distill_uses_the_step_noise():
    noise, t = _randn(*SHAPE, seed=6), distill_timesteps(4)

    def model_fn(x, t_, passes):  # depends on x non-linearly, so the re-noising shows in the output
        return {"cond": torch.tanh(x) - 0.3}

    def run(seed):
        return sample_flow_distill(model_fn, noise, t, step_noise=lambda i: step_noise(SHAPE, seed, 0, i))

    a, b = run(1), run(1)
    assert torch.equal(a, b)
    assert (a - run(2)).abs().max() > 1e-2
    one = distill_timesteps(1)  # one step draws nothing, so no step_noise is needed
    assert torch.equal(sample_flow_distill(model_fn, noise, one), noise - (torch.tanh(noise) - 0.3))


def test_distill_needs_step_noise_of_the_right_shape():
    noise, t = _randn(*SHAPE, seed=7), distill_timesteps(4)
    model_fn = _point_mass_model(torch.zeros(SHAPE))
    with pytest.raises(InputValidationError, match="step_noise"):
        sample_flow_distill(model_fn, noise, t)
    with pytest.raises(InputValidationError, match="shape"):
        sample_flow_distill(model_fn, noise, t, step_noise=lambda i: torch.zeros(3))


def _context_run(sampler, **kwargs):
    noise, context = _randn(2, 4, 5, 3, 3, seed=8), _randn(2, 4, 2, 3, 3, seed=9)
    seen = []

    def model_fn(x, t, passes):
        seen.append(x[:, :, :2].clone())
        return {name: torch.sin(x) + 0.5 for name in passes}

    out = sampler(model_fn, noise, context_latents=context, guidance=ONE_PASS, **kwargs)
    assert len(seen) == 6 and all(torch.equal(s, context) for s in seen)
    assert torch.equal(out[:, :, :2], context)
    assert not torch.equal(noise[:, :, :2], context)  # the caller's noise is not modified
    return out


def test_context_frames_stay_clean():
    _context_run(sample_flow_distill, timesteps=distill_timesteps(6),
                 step_noise=lambda i: step_noise((2, 4, 5, 3, 3), 3, 0, i))
    for order in (1, 2, 3):
        _context_run(sample_flow_unipc, timesteps=unipc_timesteps(6, 5.0), order=order)


# ---------------------------------------------------------------------------------------------
# UniPC


def test_unipc_timesteps_follow_wan():
    # Wan's table tops out at float32(0.999); set_timesteps(6, shift=5): σ = shift(linspace(σmax, 0, 7)[:-1]).
    assert UNIPC_SIGMA_MAX == float(np.float32(0.999))
    for steps, shift in ((1, 1.0), (6, 5.0), (40, 7.0)):
        t = unipc_timesteps(steps, shift)
        assert t.dtype == torch.float32 and t.shape == (steps + 1,)
        assert bool((t[:-1] > t[1:]).all()) and t[-1] == 0
    assert unipc_timesteps(6, 1.0)[0].item() == pytest.approx(999.0, abs=1e-4)
    assert unipc_timesteps(6, 5.0)[0].item() == pytest.approx(999.79987, abs=1e-4)
    base = np.linspace(UNIPC_SIGMA_MAX, 0.0, 7)[:-1]
    expected = np.append(5 * base / (1 + 4 * base) * 1000, 0.0).astype(np.float32)
    assert torch.equal(unipc_timesteps(6, 5.0), torch.from_numpy(expected))
    with pytest.raises(InputValidationError):
        unipc_timesteps(0, 5.0)


def test_unipc_first_order_without_corrector_is_euler():
    """Data-prediction exponential integrator, order 1, for flow matching == Euler (with guidance)."""
    g = Gaussian(seed=10)

    def model_fn(x, t, passes):  # a different velocity per pass, so guidance and APG are exercised
        v = g.model_fn(x, t, passes)["cond"]
        return {name: v * (1 + 0.1 * k) + 0.05 * k for k, name in enumerate(passes)}

    noise, t = _randn(*SHAPE, seed=11), unipc_timesteps(12, 5.0)
    for config in (ONE_PASS, GuidanceConfig(5.0, 4.0), GuidanceConfig(1.0, 2.0, use_apg=True)):
        euler = sample_flow_euler(model_fn, noise, t, None, config)
        unip1 = sample_flow_unipc(model_fn, noise, t, None, config, order=1, use_corrector=False)
        torch.testing.assert_close(unip1, euler, atol=1e-5, rtol=1e-5)
    unipc1 = sample_flow_unipc(model_fn, noise, t, None, ONE_PASS, order=1)  # UniC-1 is not Euler
    assert (unipc1 - sample_flow_euler(model_fn, noise, t, None, ONE_PASS)).abs().max() > 1e-3


def _hand_unipc2(model_fn, noise, sigmas):
    """Wan's UniPC-2 (bh2) written out step by step in float64 with closed-form weights."""
    def lam(s):
        return math.log(1 - s) - math.log(s)

    def step(x, s, t, m, d=None, rho=0.0):  # x at σ_s -> σ_t from data prediction m (+ ρ·D)
        b_h = math.expm1(lam(s) - lam(t))  # hφ₁ = B(h) = e^{−h} − 1
        out = t / s * x - (1 - t) * b_h * m
        return out if d is None else out - (1 - t) * b_h * rho * d

    def corrector_weights(s, t, r1):  # solve [[1, 1], [r1, 1]] ρ = b for UniC-2
        hh = lam(s) - lam(t)
        b_h = math.expm1(hh)
        g1 = b_h / hh - 1
        b1, b2 = g1 / b_h, 2 * (g1 / hh - 0.5) / b_h
        rho0 = (b1 - b2) / (1 - r1)
        return rho0, b1 - rho0

    n, x, ms, corrected = len(sigmas) - 1, noise.double(), [], []
    for i in range(n):
        v = model_fn(x.float(), torch.tensor([sigmas[i] * 1000], dtype=torch.float32), ("cond",))["cond"]
        ms.append(x - sigmas[i] * v.double())
        if i == 1:  # UniC-1 (weight 1/2) after the first-order warm-up step
            x = step(corrected[0], sigmas[0], sigmas[1], ms[0], ms[1] - ms[0], 0.5)
        elif i >= 2:
            r1 = (lam(sigmas[i - 2]) - lam(sigmas[i - 1])) / (lam(sigmas[i]) - lam(sigmas[i - 1]))
            rho0, rho1 = corrector_weights(sigmas[i - 1], sigmas[i], r1)
            d = rho0 * (ms[i - 2] - ms[i - 1]) / r1 + rho1 * (ms[i] - ms[i - 1])
            x = step(corrected[i - 1], sigmas[i - 1], sigmas[i], ms[i - 1], d, 1.0)
        corrected.append(x)
        if i == n - 1:
            return ms[-1]  # σ = 0: the data prediction
        if i == 0:
            x = step(x, sigmas[0], sigmas[1], ms[0])
        else:  # UniP-2 with ρ = 1/2
            r1 = (lam(sigmas[i - 1]) - lam(sigmas[i])) / (lam(sigmas[i + 1]) - lam(sigmas[i]))
            x = step(x, sigmas[i], sigmas[i + 1], ms[i], (ms[i - 1] - ms[i]) / r1, 0.5)


def test_unipc_order2_matches_hand_computed_steps():
    g, noise = Gaussian(seed=20, wiggle=0.3), _randn(*SHAPE, seed=21)
    for steps in (2, 3, 6):
        t = unipc_timesteps(steps, 5.0)
        expected = _hand_unipc2(g.model_fn, noise, (t.double() / 1000).tolist())
        out = sample_flow_unipc(g.model_fn, noise, t, None, ONE_PASS, order=2)
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


def test_unipc_point_mass_is_exact():
    x0_star = _randn(*SHAPE, seed=12)
    for order in (1, 2, 3):
        for steps in (1, 3, 10):
            noise, t, records = _randn(*SHAPE, seed=13), unipc_timesteps(steps, 5.0), []
            out = sample_flow_unipc(_point_mass_model(x0_star), noise, t, guidance=ONE_PASS, order=order,
                                    callback=records.append)
            torch.testing.assert_close(out, x0_star, atol=1e-5, rtol=0)
            sigma0 = t[0].double() / 1000  # the ODE keeps ε = (x − (1 − σ)·x0*)/σ of the start
            eps = (noise.double() - (1 - sigma0) * x0_star.double()) / sigma0
            _on_straight_path(records, x0_star, lambda i: eps, atol=1e-5)


def _gaussian_errors(steps, shift=2.0):
    g, noise = Gaussian(seed=14), _randn(*SHAPE, seed=15)
    t = unipc_timesteps(steps, shift)
    exact = g.exact(noise, t[0].double().item() / 1000)
    euler = sample_flow_euler(g.model_fn, noise, t, None, ONE_PASS)
    unipc = sample_flow_unipc(g.model_fn, noise, t, None, ONE_PASS)
    return _error(euler, exact), _error(unipc, exact)


def test_gaussian_closed_form_matches_a_fine_euler_solve():
    g, noise = Gaussian(seed=14), _randn(*SHAPE, seed=15)
    t = torch.linspace(999.0, 0.0, 2001)  # σ 0.999 -> 0 in 2000 equal steps (Euler error ~ 2e-3)
    fine = sample_flow_euler(g.model_fn, noise, t, None, ONE_PASS)
    assert _error(fine, g.exact(noise, t[0].double().item() / 1000)) < 3e-3


def test_unipc_converges_faster_than_euler():
    euler8, unipc8 = _gaussian_errors(8)
    euler16, unipc16 = _gaussian_errors(16)
    assert unipc8 / unipc16 >= 3.0  # higher order (Euler halves)
    assert 1.7 <= euler8 / euler16 <= 2.3
    euler10, unipc10 = _gaussian_errors(10)
    assert euler10 / unipc10 >= 3.0


def test_unipc_rejects_bad_input():
    noise, model_fn = _randn(*SHAPE), _point_mass_model(torch.zeros(SHAPE))
    with pytest.raises(InputValidationError, match="order"):
        sample_flow_unipc(model_fn, noise, unipc_timesteps(4, 5.0), order=4)
    with pytest.raises(InputValidationError, match="unipc_timesteps"):  # σ = 1: λ is infinite
        sample_flow_unipc(model_fn, noise, torch.tensor([1000.0, 500.0, 0.0]))
    with pytest.raises(InputValidationError, match="unipc_timesteps"):
        sample_flow_unipc(model_fn, noise, torch.tensor([900.0, 0.0, 0.0]))


def test_unipc_callback():
    records = []
    g = Gaussian(seed=16)
    out = sample_flow_unipc(g.model_fn, _randn(*SHAPE, seed=17), unipc_timesteps(5, 5.0), None, ONE_PASS,
                            callback=records.append)
    assert [r["step"] for r in records] == list(range(5)) and all(set(r) == KEYS for r in records)
    # the model sees the predictor output (the corrector only changes the next step's base)
    assert all(torch.equal(a["x"], b["x_in"]) for a, b in zip(records, records[1:]))
    assert torch.equal(records[-1]["x"], out) and torch.equal(out, records[-1]["denoised"])


def test_unipc_matches_diffusers():
    """diffusers' UniPCMultistepScheduler (flow sigmas, bh2, x0) on Wan's σ ladder, same toy model."""
    diffusers = pytest.importorskip("diffusers")
    g, noise = Gaussian(seed=18, wiggle=0.3), _randn(*SHAPE, seed=19)
    for order in (1, 2, 3):
        for steps, shift in ((1, 5.0), (3, 1.0), (8, 5.0), (20, 7.0)):
            scheduler = diffusers.UniPCMultistepScheduler(
                use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift, solver_order=order,
                solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
            scheduler.set_timesteps(sigmas=np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1])
            ours_t = unipc_timesteps(steps, shift)
            torch.testing.assert_close(ours_t.double() / 1000, scheduler.sigmas.double(), atol=1e-7, rtol=0)
            x = noise.clone()
            for i, timestep in enumerate(scheduler.timesteps):
                v = g.model_fn(x, scheduler.sigmas[i : i + 1] * 1000, ("cond",))["cond"]
                x = scheduler.step(v, timestep, x).prev_sample
            ours = sample_flow_unipc(g.model_fn, noise, scheduler.sigmas * 1000, None, ONE_PASS, order=order)
            torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)
