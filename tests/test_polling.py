"""When cf2run asks whether a build is done: the backoff's times, and quick asks around the time
builds like it took, so a build slot does not idle up to a backoff step after its build ended."""

from __future__ import annotations

import itertools

import pytest

from cf2run.gcp.cloud import GCP_POLLING, LOCAL_POLLING, Backoff
from tasks.build import RecentBuilds


def asks(backoff: Backoff, expected_s: float | None, until_s: float) -> list[float]:
    return list(itertools.takewhile(lambda at: at <= until_s, backoff.schedule(expected_s)))


def test_without_an_expectation_the_schedule_is_the_backoff() -> None:
    backoff = Backoff(first_s=1.0, maximum_s=4.0, factor=2.0)
    assert asks(backoff, None, 20) == [1, 3, 7, 11, 15, 19]


@pytest.mark.parametrize("backoff", [LOCAL_POLLING.build, GCP_POLLING.build], ids=["local", "gcp"])
@pytest.mark.parametrize("expected_s", [0.3, 3.05, 47.5, 90.0])
def test_an_end_near_the_expected_time_is_noticed_within_a_quick_step(backoff: Backoff,
                                                                       expected_s: float) -> None:
    times = asks(backoff, expected_s, expected_s + 10 * backoff.maximum_s)
    step = backoff.first_s
    for k in range(-5, 31):  # ends from half a step before the expected time to three steps after
        end = expected_s + k * step / 10
        noticed = next(at for at in times if at >= end)
        assert noticed - end <= step + 1e-9, (end, times)  # half a step, but for a backoff ask between
    around = [t for t in times if expected_s <= t <= expected_s + 3 * step + 1e-9]
    assert len(around) >= 5, times  # every half step, but for the backoff's asks merged in
    without = asks(backoff, None, expected_s + 10 * backoff.maximum_s)
    assert len(times) - len(without) <= 8, "at most the quick asks are added"
    assert set(without) - set(times) <= {t for t in without if any(0 < abs(t - q) < step / 2 for q in times)}


def test_asks_are_never_closer_than_half_the_first_step() -> None:
    backoff = LOCAL_POLLING.build
    for expected_s in [0.05, 0.1, 0.2, 0.3, 0.8, 1.3, 2.9, 3.3]:
        times = asks(backoff, expected_s, 10)
        assert times == sorted(times) and times[0] > 0
        assert all(b - a >= backoff.first_s / 2 - 1e-9 for a, b in itertools.pairwise(times)), times


def test_recent_builds_give_the_median_of_the_last_ones() -> None:
    recent = RecentBuilds(keep=3)
    assert recent.typical_s() is None
    for seconds in [100.0, 3.0, 3.2, 3.1]:
        recent.add(seconds)
    assert recent.typical_s() == 3.1  # 100 s has dropped out
