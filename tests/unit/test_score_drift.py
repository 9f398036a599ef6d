from __future__ import annotations

import random

import pytest

from monitoring.score_drift import Reservoir, ScoreDriftTracker


def _normal(n: int, mean: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, 1.0) for _ in range(n)]


def test_same_distribution_gives_small_psi_shifted_gives_large() -> None:
    tracker = ScoreDriftTracker(window_s=60, min_samples=100)
    assert tracker.observe(_normal(2000, 0.0, 1), now=0.0) is None
    assert tracker.observe(_normal(2000, 0.0, 2), now=61.0) is None  # first reference only
    stable = tracker.observe(_normal(2000, 2.0, 3), now=122.0)
    assert stable is not None and stable < 0.1  # window 2 vs window 1: same distribution
    shifted = tracker.observe([], now=183.0)
    assert shifted is not None and shifted > 0.25  # window 3 (mean +2) vs window 2


def test_quiet_windows_are_not_compared() -> None:
    tracker = ScoreDriftTracker(window_s=10, min_samples=100)
    tracker.observe(_normal(500, 0.0, 1), now=0.0)
    tracker.observe(_normal(5, 5.0, 2), now=11.0)
    assert tracker.observe([], now=22.0) is None  # 5 scores: too few to judge


def test_reservoir_is_bounded_and_uniform() -> None:
    res = Reservoir(100, random.Random(0))
    for i in range(10_000):
        res.add(float(i))
    assert len(res.values) == 100 and res.seen == 10_000
    assert 3000 < sum(res.values) / 100 < 7000  # a uniform sample's mean is near 5000


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ScoreDriftTracker(window_s=0)
