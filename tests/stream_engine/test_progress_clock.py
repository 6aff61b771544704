"""ETA of the progress clock: steady under a slow first step, never 0 while a decode is still ahead."""
from __future__ import annotations

import pytest

from infinitetalk_core.stream import hooks as hooks_module
from infinitetalk_core.stream.hooks import ProgressClock


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture()
def fake_time(monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(hooks_module.time, "perf_counter", clock)
    return clock


def _run_chunk(clock: ProgressClock, fake_time: FakeTime, chunk: int, step_s: float, overhead_s: float,
               first_step_s: float | None = None) -> list[float]:
    etas = []
    fake_time.now += overhead_s / 2  # conditioning
    clock.start_sampling()
    for step in range(1, clock.steps + 1):
        fake_time.now += first_step_s if (first_step_s and step == 1) else step_s
        clock.step_done()
        etas.append(clock.eta(chunk, step))
    fake_time.now += overhead_s / 2  # decode, colour, commit
    clock.chunk_done(chunk)
    return etas


def test_eta_is_steady_after_a_slow_first_step(fake_time):
    clock = ProgressClock(0, 4, 10)
    first = _run_chunk(clock, fake_time, 0, 1.0, 2.0, first_step_s=30.0)
    second = _run_chunk(clock, fake_time, 1, 1.0, 2.0)
    # true remaining time at chunk 1 step 5: 5 steps + 2 chunks x 10 steps + 3 chunks' overhead
    true_left = 5 + 20 + 3 * 2.0
    assert second[4] == pytest.approx(true_left, rel=0.35)
    rises = [b - a for a, b in zip(second, second[1:])]
    assert max(rises) <= 0.05 * second[0], second  # no jumps (the reported 135 -> 55 -> 94 s)
    assert first[0] is None and first[1] is None  # one warm-up step says nothing yet
    assert first[2] == pytest.approx(37 + 4 * 2.0, rel=0.35)  # not 30 s x 37 steps left


def test_eta_during_the_last_decode_is_not_zero(fake_time):
    clock = ProgressClock(0, 2, 4)
    _run_chunk(clock, fake_time, 0, 1.0, 6.0)
    last = _run_chunk(clock, fake_time, 1, 1.0, 6.0)
    assert last[-1] == pytest.approx(6.0, rel=0.5)  # the decode of the last chunk is still ahead


def test_eta_unknown_before_any_timing(fake_time):
    clock = ProgressClock(0, 1, 3)
    assert clock.eta(0, 0) is None
    clock.start_sampling()
    fake_time.now += 1
    for _ in range(3):
        clock.step_done()
    assert clock.eta(0, 3) is None  # only the never-measured decode is left: say so, not "0 s"
