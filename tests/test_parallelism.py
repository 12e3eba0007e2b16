"""contract.parallelism: near-duplicate suggestions and trials in flight (what the report and the bench share)."""

from __future__ import annotations

import math
import random

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
import pytest

from contract.parallelism import NEAR_FRACTION, Suggestion, in_flight, mean_in_flight, near_duplicates

SPACE = {
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "gamma": FloatDistribution(0.0, 5.0),
    "width": IntDistribution(16, 48, step=16),
    "model": CategoricalDistribution(["multipath", "unet"]),
}


def _s(start=None, end=None, **params):
    return Suggestion({"lr": 1e-3, "gamma": 2.0, "width": 32, "model": "unet", **params}, SPACE, start, end)


def test_near_within_one_percent_of_the_range_log_scale_for_log_parameters():
    # lr is log: 1% of log(1e-2 / 1e-4) is a factor of 10 ** 0.02 (~1.047).
    inside, outside = 1e-3 * 10**0.019, 1e-3 * 10**0.021
    assert near_duplicates([_s(), _s(lr=inside)]).near.tolist() == [False, True]
    assert near_duplicates([_s(), _s(lr=outside)]).near.tolist() == [False, False]
    assert not near_duplicates([_s(), _s(lr=inside)]).exact.any()
    # gamma is linear: 1% of 5.0 is 0.05, the edge included.
    assert near_duplicates([_s(), _s(gamma=2.05)]).near.tolist() == [False, True]
    assert near_duplicates([_s(), _s(gamma=2.0 - 0.051)]).near.tolist() == [False, False]


def test_categorical_must_match_and_exact_duplicates_are_flagged():
    dup = near_duplicates([_s(), _s(model="multipath"), _s(width=48), _s()])
    assert dup.near.tolist() == [False, False, False, True]
    assert dup.exact.tolist() == [False, False, False, True]
    assert (dup.n_near, dup.n_exact) == (1, 1)


def test_only_the_later_one_counts_and_a_missing_parameter_differs():
    a = Suggestion({"lr": 1e-3}, {"lr": SPACE["lr"]})
    b = Suggestion({"lr": 1e-3, "gamma": 1.0}, {"lr": SPACE["lr"], "gamma": SPACE["gamma"]})
    assert near_duplicates([a, b, a]).near.tolist() == [False, False, True]


def test_concurrent_when_the_earlier_twin_was_still_running():
    dup = near_duplicates(
        [
            _s(0, 10),
            _s(5, 15),  # started while the first ran: concurrent
            _s(20, None),
            _s(30, 40),  # the first is still running (no end): concurrent
            _s(50, 60, model="multipath"),
            _s(60, 70, model="multipath"),  # started as the twin ended: not
        ]
    )
    assert dup.near.tolist() == [False, True, True, True, False, True]
    assert dup.concurrent.tolist() == [False, True, False, True, False, False]


def test_matches_a_brute_force_reference():
    rng = random.Random(3)
    # A crowded sample (values from a few clusters), so that many pairs are within reach.
    suggestions = [
        _s(
            lr=10 ** rng.choice([-3.0, -2.5]) * (1 + rng.uniform(-0.03, 0.03)),
            gamma=rng.choice([1.0, 4.0]) + rng.uniform(-0.1, 0.1),
            width=rng.choice([16, 32]),
            model=rng.choice(["unet", "multipath"]),
            start=float(i),
            end=float(i) + rng.uniform(0, 8),
        )
        for i in range(300)
    ]

    def close(a, b):
        for name, dist in SPACE.items():
            x, y = a.params[name], b.params[name]
            if isinstance(dist, CategoricalDistribution):
                if x != y:
                    return False
                continue
            lo, hi = dist.low, dist.high
            if dist.log:
                x, y, lo, hi = map(math.log, (x, y, lo, hi))
            if abs(x - y) > NEAR_FRACTION * (hi - lo) + 1e-12:
                return False
        return True

    expected_near = [any(close(suggestions[i], suggestions[j]) for i in range(j)) for j in range(len(suggestions))]
    expected_concurrent = [
        any(close(suggestions[i], suggestions[j]) and suggestions[i].end > suggestions[j].start for i in range(j))
        for j in range(len(suggestions))
    ]
    dup = near_duplicates(suggestions)
    assert 20 < sum(expected_near) < 280  # the sample does exercise both outcomes
    assert dup.near.tolist() == expected_near
    assert dup.concurrent.tolist() == expected_concurrent


def test_in_flight_counts_overlaps_as_a_step_function():
    times, counts = in_flight([(0, 10), (2, 4), (4, 6), (12, None)], now=15)
    # at 4 one ends and one starts: still 2, counted once
    assert times.tolist() == [0, 2, 4, 6, 10, 12, 15]
    assert counts.tolist() == [1, 2, 2, 1, 0, 1, 0]
    assert mean_in_flight(times, counts) == pytest.approx((2 * 1 + 4 * 2 + 4 * 1 + 2 * 0 + 3 * 1) / 15)
    assert in_flight([])[0].size == 0


def test_in_flight_of_a_running_trial_without_now_ends_at_the_last_time_seen():
    times, counts = in_flight([(0, 5), (3, None)])
    assert times.tolist() == [0, 3, 5] and counts.tolist() == [1, 2, 0]
    assert isinstance(counts, np.ndarray)
