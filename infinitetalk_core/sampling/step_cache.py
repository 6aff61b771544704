"""Step-cache settings (none / TeaCache / EasyCache) and a fresh cache state per chunk."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputValidationError
from .easycache import EasyCache, EasyCacheConfig
from .teacache import TeaCache, TeaCacheConfig

STEP_CACHES = ("none", "teacache", "easycache")
MIN_CACHED_STEPS = 10  # below this every step matters; anchors: no gain on 4-8 step distilled models


@dataclass(frozen=True)
class StepCacheSettings:
    """method: one of STEP_CACHES. threshold 0 = the method's default (TeaCache 0.2, EasyCache 0.2).
    start_step / end_step (0-based; 0 = the method's default): steps before start and from end on are
    always computed. resolution: the TeaCache coefficient set ("480" or "720")."""

    method: str = "none"
    threshold: float = 0.0
    start_step: int = 0
    end_step: int = 0
    resolution: str = "480"

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def validate(self, steps: int, scheduler: str = "flow_euler") -> None:
        """Raise InputValidationError for an unknown method, bad numbers, or a cache that cannot help."""
        if self.method not in STEP_CACHES:
            raise InputValidationError(
                f"step_cache must be one of {', '.join(STEP_CACHES)}; got {self.method!r}.",
                "Pick none, teacache or easycache.",
            )
        _check_numbers(self)
        if not self.enabled:
            return
        if steps < MIN_CACHED_STEPS or scheduler == "distill":
            raise InputValidationError(
                f"step_cache {self.method} is refused at {steps} steps ({scheduler}): a step cache needs "
                f"at least {MIN_CACHED_STEPS} steps to skip anything useful, and on 4-8 step distilled "
                "models every step changes the result (TeaCache always computes its first 5 steps).",
                "Set step_cache to none for distilled presets; use a cache only with 20-50 steps.",
            )
        self._check_window(steps)
        self.config()  # threshold range of the method

    def _check_window(self, steps: int) -> None:
        start, end = self.start_step, self.end_step or steps
        if start and not 1 <= start < steps or not start < end <= steps:
            raise InputValidationError(
                f"cache_start_step {self.start_step} / cache_end_step {self.end_step} do not fit {steps} "
                "steps.",
                f"Use 0 for the defaults, or 1 <= cache_start_step < cache_end_step <= {steps}.",
            )

    def config(self) -> TeaCacheConfig | EasyCacheConfig:
        """The method's own config with the defaults filled in."""
        start, end = self.start_step or None, self.end_step or None
        if self.method == "teacache":
            return TeaCacheConfig(self.threshold or 0.2, self.resolution, True, start, end)
        return EasyCacheConfig(self.threshold or 0.2, start, end)

    def new_state(self, steps: int) -> TeaCache | EasyCache | None:
        """A fresh cache for one chunk (None when caching is off)."""
        if self.method == "teacache":
            return TeaCache(self.config(), steps)
        if self.method == "easycache":
            return EasyCache(self.config(), steps)
        return None


def _check_numbers(s: StepCacheSettings) -> None:
    t = s.threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= 10:
        raise InputValidationError(
            f"cache_threshold must be in [0, 10], got {t!r}.", "Use 0 for the method's default (0.2)."
        )
    for name in ("start_step", "end_step"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputValidationError(
                f"cache_{name} must be a whole number >= 0, got {v!r}.", "Use 0 for the method's default."
            )
    if s.resolution not in ("480", "720"):
        raise InputValidationError(
            f"step cache resolution must be 480 or 720, got {s.resolution!r}.", "Use the bucket family."
        )


__all__ = ["MIN_CACHED_STEPS", "STEP_CACHES", "StepCacheSettings"]
