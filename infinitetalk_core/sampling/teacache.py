"""TeaCache step caching as the reference does it (spec §5.5), keyed by guidance pass name.

Per DiT call of a pass, an indicator that depends only on t (e0 = the time projection, ``use_ret_steps``;
or e = the time embedding) is compared with the same pass's previous one: rel_l1 = mean|cur − prev| /
mean|prev| (float32), rescaled by a degree-4 polynomial fitted on the real 14B model, and accumulated.
While the sum stays below the threshold the call skips every transformer block and adds the residual
(block output − input) cached by that pass's last computed call; otherwise it computes and the sum
restarts at 0. Warm-up steps are always computed.

Where we differ from the reference, on purpose:
- The reference picks the cache slot by call order (``cnt % 3``). In its 2-pass mode (text scale 1)
  the slots then rotate through the branches, so a skipped ``cond`` call can reuse a ``drop_audio``
  residual, and its counter (wrapping at 3·steps calls) runs on into the next chunk, so chunk 2 gets
  a different warm-up. Here each pass has its own slot, steps are counted per pass, and the state is
  new for every chunk. In the 3-pass mode both rules give identical decisions and outputs.
- The warm-up counts steps (5 with ``use_ret_steps``, as the reference's 15 calls = 5 steps of 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InputValidationError

# numpy.poly1d order (highest power first); read back from the reference's teacache_init
TEACACHE_COEFFICIENTS = {
    ("480", True): (2.57151496e5, -3.54229917e4, 1.40286849e3, -1.35890334e1, 1.32517977e-1),
    ("720", True): (8.10705460e3, 2.13393892e3, -3.72934672e2, 1.66203073e1, -4.17769401e-2),
    ("480", False): (-3.02331670e2, 2.23948934e2, -5.25463970e1, 5.87348440, -2.01973289e-1),
    ("720", False): (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
}
DEFAULT_THRESHOLD = 0.2  # reference --teacache_thresh default; MultiTalk recommends 0.2-0.5


@dataclass(frozen=True)
class TeaCacheConfig:
    """threshold: skip while the accumulated rescaled distance stays below it. resolution: "480"/"720"
    coefficient set. start_step / end_step: steps < start or >= end are always computed (None = the
    reference's: start 5 and no end with ``use_ret_steps``, else start 1 and end = steps − 1)."""

    threshold: float = DEFAULT_THRESHOLD
    resolution: str = "480"
    use_ret_steps: bool = True
    start_step: int | None = None
    end_step: int | None = None

    def __post_init__(self) -> None:
        if (self.resolution, self.use_ret_steps) not in TEACACHE_COEFFICIENTS:
            raise InputValidationError(
                f"TeaCache has no coefficients for resolution {self.resolution!r}.", 'Use "480" or "720".'
            )
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
                and 0 < self.threshold <= 10):
            raise InputValidationError(
                f"TeaCache threshold must be in (0, 10], got {self.threshold!r}.",
                "Use 0.2 (reference default) to 0.5; higher skips more and costs quality.",
            )

    @property
    def coefficients(self) -> tuple[float, ...]:
        return TEACACHE_COEFFICIENTS[(self.resolution, self.use_ret_steps)]

    def forced(self, step: int, steps: int) -> bool:
        """True when this step is always computed (warm-up or cut-off window)."""
        start = self.start_step if self.start_step is not None else (5 if self.use_ret_steps else 1)
        end = self.end_step if self.end_step is not None else (steps if self.use_ret_steps else steps - 1)
        return step < start or step >= end


@dataclass(frozen=True)
class TeaSlot:
    """One pass's cache: the previous indicator, the accumulated distance and the last residual."""

    previous: torch.Tensor | None = None
    accumulator: float = 0.0
    residual: torch.Tensor | None = None


@dataclass(frozen=True)
class TeaDecision:
    """What one call did; the distances are None for forced calls (the reference does not evaluate them)."""

    computed: bool
    forced: bool
    rel_l1: float | None = None
    rescaled: float | None = None
    accumulated: float | None = None
    accumulator_after: float = 0.0


def rel_l1_distance(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|current − previous| / mean|previous| in float32 (the reference's arithmetic)."""
    current, previous = current.float(), previous.float()
    return float((current - previous).abs().mean() / previous.abs().mean())


def rescale_distance(rel_l1: float, coefficients: tuple[float, ...]) -> float:
    """The fitted polynomial (highest power first) evaluated in float64, as numpy.poly1d does."""
    return float(np.poly1d(coefficients)(rel_l1))


def teacache_decide(slot: TeaSlot, indicator: torch.Tensor, step: int, steps: int,
                    config: TeaCacheConfig) -> tuple[TeaDecision, TeaSlot]:
    """Pure: this call's decision and the slot after it (its residual is left for the caller to refresh
    when the call computes). A slot without a previous indicator or residual always computes."""
    if config.forced(step, steps) or slot.previous is None or slot.residual is None:
        return TeaDecision(True, True), replace(slot, previous=indicator, accumulator=0.0)
    rel = rel_l1_distance(indicator, slot.previous)
    rescaled = rescale_distance(rel, config.coefficients)
    accumulated = slot.accumulator + rescaled
    skip = accumulated < config.threshold
    after = accumulated if skip else 0.0
    decision = TeaDecision(not skip, False, rel, rescaled, accumulated, after)
    return decision, replace(slot, previous=indicator, accumulator=after)


class TeaCache:
    """TeaCache state of one chunk: one slot per pass name, steps counted per pass (every pass is
    called once per sampling step). Make a new one for every chunk."""

    def __init__(self, config: TeaCacheConfig, steps: int):
        self.config, self.steps = config, steps
        self.slots: dict[str, TeaSlot] = {}
        self.calls: dict[str, int] = {}
        self.log: list[tuple[str, TeaDecision]] = []

    def decide(self, pass_name: str, indicator: torch.Tensor) -> TeaDecision:
        """Decide this call of ``pass_name`` and advance its slot."""
        step = self.calls.get(pass_name, 0)
        decision, slot = teacache_decide(self.slots.get(pass_name, TeaSlot()), indicator, step, self.steps,
                                         self.config)
        self.slots[pass_name], self.calls[pass_name] = slot, step + 1
        self.log.append((pass_name, decision))
        return decision

    def residual(self, pass_name: str) -> torch.Tensor:
        """The residual to add for a skipped call of ``pass_name``."""
        return self.slots[pass_name].residual

    def store(self, pass_name: str, residual: torch.Tensor) -> None:
        """Keep a computed call's residual (block output − input) for the pass's next skips."""
        self.slots[pass_name] = replace(self.slots[pass_name], residual=residual)

    def snapshot(self) -> tuple:
        """The state to go back to when a call is retried (slots are immutable, so copies are cheap)."""
        return dict(self.slots), dict(self.calls), len(self.log)

    def restore(self, saved: tuple) -> None:
        slots, calls, logged = saved
        self.slots, self.calls, self.log = dict(slots), dict(calls), self.log[:logged]

    @property
    def skipped(self) -> int:
        return sum(not d.computed for _, d in self.log)

    @property
    def evaluated(self) -> int:
        return len(self.log)


__all__ = [
    "DEFAULT_THRESHOLD", "TEACACHE_COEFFICIENTS", "TeaCache", "TeaCacheConfig", "TeaDecision", "TeaSlot",
    "rel_l1_distance", "rescale_distance", "teacache_decide",
]
