"""UniPC multistep sampler for flow matching, as Wan 2.1's ``FlowUniPCMultistepScheduler`` (bh2,
data prediction, solver order 2, lower_order_final, UniC corrector on, final σ = 0).

Flow matching as a diffusion: α = 1 − σ, λ = log α − log σ (rises as σ falls); the model's data
prediction at step i is m_i = x_i − σ_i·v_i. With h = λ_t − λ_s and B(h) = hφ₁ = expm1(−h):

- predictor (UniP-p) from σ_s to σ_t:  x_t = (σ_t/σ_s)·x_s − α_t·hφ₁·m_s − α_t·B(h)·Σ_k ρ_k·D_k,
  D_k = (m_{s−k} − m_s)/r_k, r_k = (λ_{s−k} − λ_s)/h (earlier outputs);
- corrector (UniC-p): the same update from the previous sample x_{i−1}, plus ρ_p·(m_i − m_{i−1}),
  once the model output m_i at the (uncorrected) predicted sample is known. It is not applied
  after the last model call. p = min(order, steps left, steps done + 1) (warm-up, lower_order_final).

For p = 1 and no corrector the update is exactly Euler: x_t = x_s − (σ_s − σ_t)·v_s. The step to
σ = 0 is first order and returns m (α = 1). Tensor maths is in the latent's dtype; the scalar
coefficients are float64 Python numbers.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputValidationError
from .guidance import APGState, GuidanceConfig
from .sampler import ModelFn, Pin, StepCallback, _check, guided_velocity, settle
from .schedule import BASE_SHIFT_FIX, MAX_STEPS, NUM_TRAIN_TIMESTEPS, check_schedule

# Wan's training table is σ = 1 − linspace(1, 1/1000, 1000) reversed, stored as float32: its largest
# entry is float32(0.999) (λ = log 0 at σ = 1 would make the multistep ratios undefined).
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
UNIPC_SIGMA_MIN = 0.0
MAX_ORDER = 3
History = list[tuple[float, torch.Tensor]]  # (σ_j, m_j), oldest first


def unipc_timesteps(steps: int, shift: float) -> torch.Tensor:
    """[steps + 1] float32 CPU: 1000·σ of Wan's FlowUniPC ``set_timesteps(steps, shift=shift)``.

    σ = shift(linspace(0.999, 0, steps + 1)[:-1]) in float64, then 0 appended. Wan hands its DiT
    int64(1000·σ) (truncated) but steps with σ; this returns 1000·σ unrounded (float32).
    """
    check_schedule(steps, shift, MAX_STEPS, "Use 20-40 steps with UniPC for the base model.", BASE_SHIFT_FIX)
    base = np.linspace(UNIPC_SIGMA_MAX, UNIPC_SIGMA_MIN, steps + 1)[:-1]
    sigmas = float(shift) * base / (1 + (float(shift) - 1) * base)
    t = np.concatenate([sigmas * NUM_TRAIN_TIMESTEPS, [0.0]]).astype(np.float32)
    return torch.from_numpy(t)


def _log_snr(sigma: float) -> float:
    return math.log(1.0 - sigma) - math.log(sigma)


def _coefficients(h: float, rks: list[float], order: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(hφ₁ = B(h), R [p, p], b [p]) of the bh2 data-prediction update: R ρ = b gives the weights."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    ratios = torch.tensor(rks + [1.0], dtype=torch.float64)
    rows, b, h_phi_k, factorial = [], [], h_phi_1 / hh - 1.0, 1
    for k in range(1, order + 1):
        rows.append(ratios ** (k - 1))
        b.append(h_phi_k * factorial / h_phi_1)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial  # φ_{k+1} from φ_k (Taylor remainder recursion)
    return h_phi_1, torch.stack(rows), torch.tensor(b, dtype=torch.float64)


def _differences(m0: torch.Tensor, lam0: float, h: float,
                 earlier: History) -> tuple[list[float], list[torch.Tensor]]:
    """(r_k, D_k = (m_k − m0)/r_k) for the earlier outputs, most recent first."""
    rks, diffs = [], []
    for sigma_k, m_k in reversed(earlier):
        r = (_log_snr(sigma_k) - lam0) / h
        rks.append(r)
        diffs.append((m_k - m0) / r)
    return rks, diffs


def _weighted(weights: list[float], diffs: list[torch.Tensor]) -> torch.Tensor | float:
    total: torch.Tensor | float = 0.0
    for w, d in zip(weights, diffs):
        total = total + w * d
    return total


def _update(x: torch.Tensor, sigma_s: float, sigma_t: float, history: History,
            m_new: torch.Tensor | None) -> torch.Tensor:
    """UniP (m_new None) or UniC (m_new = output at σ_t) from x at σ_s; history ends with m_s."""
    m0, earlier = history[-1][1], history[:-1]
    lam0 = _log_snr(sigma_s)
    h = _log_snr(sigma_t) - lam0
    rks, diffs = _differences(m0, lam0, h, earlier)
    order = len(earlier) + 1
    h_phi_1, R, b = _coefficients(h, rks, order)
    alpha_t = 1.0 - sigma_t
    x_t = (sigma_t / sigma_s) * x - (alpha_t * h_phi_1) * m0
    if m_new is None:  # predictor: order 2 uses ρ = 1/2 as Wan/diffusers do (not the solved value)
        rhos = [] if order == 1 else [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        residual = _weighted(rhos, diffs)
    else:  # corrector: order 1 likewise fixes ρ = 1/2
        rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
        residual = _weighted(rhos[:-1], diffs) + rhos[-1] * (m_new - m0)
    if isinstance(residual, float):
        return x_t
    return x_t - (alpha_t * h_phi_1) * residual  # bh2: B(h) = hφ₁


def _check_unipc(sigmas: list[float], order: object) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise InputValidationError(f"order must be an integer in 1..{MAX_ORDER}, got {order!r}.",
                                   "Use order 2 (Wan's default for guided sampling).")
    inner, last = sigmas[:-1], sigmas[-1]
    decreasing = all(a > b for a, b in zip(sigmas, sigmas[1:]))
    if not decreasing or not all(0.0 < s < 1.0 for s in inner) or last < 0.0:
        raise InputValidationError(
            "UniPC timesteps must fall strictly, stay inside (0, 1000) before the last and end at >= 0.",
            "Use unipc_timesteps(steps, shift) (it starts at 999.x: λ is infinite at t = 1000).",
        )


def _predict(x: torch.Tensor, sigma_s: float, sigma_t: float, history: History) -> torch.Tensor:
    if sigma_t == 0.0:  # λ_t = ∞: hφ₁ = −1 and the update is exactly the data prediction
        return history[-1][1].clone()
    return _update(x, sigma_s, sigma_t, history, None)


def sample_flow_unipc(
    model_fn: ModelFn,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    context_latents: torch.Tensor | None = None,
    guidance: GuidanceConfig = GuidanceConfig(),
    callback: StepCallback | None = None,
    order: int = 2,
    use_corrector: bool = True,
    pin: Pin | None = None,
) -> torch.Tensor:
    """Denoise one chunk with UniPC (bh2, x0 prediction): [..., C, T, h, w] noise -> final latent.

    timesteps: [S+1] from unipc_timesteps. order: solver order 1..3 (Wan: 2). use_corrector=False
    gives plain UniP (order 1 is then Euler). callback: as sample_flow_euler's; x_in is the sample
    the model saw (before correction), x the next one. Context frames stay clean; ``pin`` (optional)
    holds a region after the start, every correction and every prediction.
    """
    _check(noise, timesteps, context_latents)
    timesteps = timesteps.to(device=noise.device, dtype=torch.float32)
    sigmas = (timesteps.double().cpu() / NUM_TRAIN_TIMESTEPS).tolist()
    _check_unipc(sigmas, order)
    passes = guidance.passes
    level = timesteps / NUM_TRAIN_TIMESTEPS  # σ as tensors for the pin
    x, state, total = settle(noise.clone(), context_latents, pin, level[:1]), APGState(), len(sigmas) - 1
    history: History = []
    last, last_order = x, 0
    for i in range(total):
        t = timesteps[i : i + 1]
        v, state, terms = guided_velocity(model_fn, x, t, passes, guidance, state)
        x_in, m = x, x - sigmas[i] * v
        if use_corrector and i > 0:
            corrected = _update(last, sigmas[i - 1], sigmas[i], history[-last_order:], m)
            x = settle(corrected, context_latents, pin, level[i : i + 1])
        history = (history + [(sigmas[i], m)])[-order:]
        last, last_order = x, min(order, total - i, i + 1)
        x = settle(_predict(x, sigmas[i], sigmas[i + 1], history[-last_order:]), context_latents, pin,
                   level[i + 1 : i + 2])
        if callback is not None:
            callback({"step": i, "total": total, "t": t, "x_in": x_in, "x": x, "v": v,
                      "denoised": m, "guidance_terms": terms})
    return x
