"""EasyCache: calibration-free, runtime-adaptive step caching around any model callable.

EasyCache (Zhou et al. 2025, arXiv 2507.02860) needs no fitted coefficients: it measures, while
sampling, how strongly the model's output reacts to a change of its input (the transformation rate
k = mean|Δv| / mean|Δx| between two computed steps), predicts each new step's relative output change as
k · mean|x − x_prev| / mean|v_prev|, and accumulates the predictions. While the sum stays below the
threshold the step reuses each pass's last transformation (v = x + (v_prev − x_prev)) instead of calling
the model; otherwise it computes, and the sum restarts at 0. The rules and defaults follow ComfyUI's
native EasyCache node (threshold 0.2, caching between 15 % and 95 % of the steps; here in steps): the
first pass decides for all passes of a step, x_prev / v_prev are those of the last computed step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from ..errors import InputValidationError

ModelFn = Callable[[torch.Tensor, torch.Tensor, Sequence[str]], Mapping[str, torch.Tensor]]
DEFAULT_THRESHOLD = 0.2
DEFAULT_START, DEFAULT_END = 0.15, 0.95  # fractions of the steps (ComfyUI's start/end percent)


@dataclass(frozen=True)
class EasyCacheConfig:
    """threshold: skip while the accumulated predicted change stays below it. start_step / end_step:
    caching only for start <= step < end (None: 15 % / 95 % of the steps, rounded)."""

    threshold: float = DEFAULT_THRESHOLD
    start_step: int | None = None
    end_step: int | None = None

    def __post_init__(self) -> None:
        t = self.threshold
        if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 < t <= 10):
            raise InputValidationError(
                f"EasyCache threshold must be in (0, 10], got {t!r}.",
                "Use 0.2 (ComfyUI's default); lower is closer to the uncached result, higher is faster.",
            )

    def window(self, steps: int) -> tuple[int, int]:
        """(first step that may be skipped, first step after the caching window)."""
        start = self.start_step if self.start_step is not None else round(DEFAULT_START * steps)
        end = self.end_step if self.end_step is not None else round(DEFAULT_END * steps)
        return max(start, 1), min(end, steps)


def _mean_abs(x: torch.Tensor) -> torch.Tensor:
    return x.float().abs().mean()


class EasyCache:
    """EasyCache state of one chunk (make a new one per chunk); ``wrap(model_fn)`` applies it."""

    def __init__(self, config: EasyCacheConfig, steps: int):
        self.config, self.steps = config, steps
        self.step = 0
        self.x_prev: torch.Tensor | None = None
        self.v_prev: torch.Tensor | None = None  # the deciding (first) pass's last computed output
        self.rate: torch.Tensor | None = None
        self.cumulative = 0.0
        self.diffs: dict[str, torch.Tensor] = {}
        self.evaluated = self.skipped = 0
        self.log: list[bool] = []  # per step: True = computed

    def wrap(self, model_fn: ModelFn) -> ModelFn:
        """The cached model callable (one call per sampling step, as every sampler here makes)."""

        def cached(x: torch.Tensor, t: torch.Tensor, passes: Sequence[str]) -> dict[str, torch.Tensor]:
            step, self.step = self.step, self.step + 1
            change = self._input_change(x, step)
            if change is not None and self._should_skip(change, passes):
                return self._reuse(x, passes)
            return self._compute(model_fn, x, t, passes, change)

        return cached

    def _input_change(self, x: torch.Tensor, step: int) -> torch.Tensor | None:
        start, end = self.config.window(self.steps)
        if not start <= step < end or self.x_prev is None:
            return None
        return _mean_abs(x - self.x_prev)

    def _should_skip(self, change: torch.Tensor, passes: Sequence[str]) -> bool:
        if self.rate is None or any(p not in self.diffs for p in passes):
            return False
        self.cumulative += float(self.rate * change / _mean_abs(self.v_prev))
        if self.cumulative < self.config.threshold:
            return True
        self.cumulative = 0.0
        return False

    def _reuse(self, x: torch.Tensor, passes: Sequence[str]) -> dict[str, torch.Tensor]:
        self.evaluated += len(passes)
        self.skipped += len(passes)
        self.log.append(False)
        return {p: x + self.diffs[p] for p in passes}

    def _compute(self, model_fn, x, t, passes, change) -> dict[str, torch.Tensor]:
        out = dict(model_fn(x, t, passes))
        first = out[passes[0]]
        if self.v_prev is not None and change is not None and float(change) > 0:
            self.rate = _mean_abs(first - self.v_prev) / change
        self.diffs = {p: out[p] - x for p in passes}
        self.x_prev, self.v_prev = x.clone(), first
        self.evaluated += len(passes)
        self.log.append(True)
        return out


__all__ = ["DEFAULT_THRESHOLD", "EasyCache", "EasyCacheConfig"]
