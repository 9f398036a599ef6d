from __future__ import annotations

import math

import numpy as np
import pytest

from monitoring.drift import (
    WindowedEntityDistribution,
    embedding_drift,
    histogram_psi,
    jensen_shannon,
    psi,
)


def test_psi_by_hand() -> None:
    expected = {"a": 50, "b": 50}
    actual = {"a": 80, "b": 20}
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand, rel=1e-3)
    assert psi(expected, expected) == pytest.approx(0.0, abs=1e-12)
    assert psi(expected, {"c": 10}) > 5  # disjoint: large but finite


def test_jensen_shannon_bounds() -> None:
    assert jensen_shannon({"a": 1}, {"a": 5}) == pytest.approx(0.0)
    assert jensen_shannon({"a": 1}, {"b": 1}) == pytest.approx(1.0)
    # p = (1, 0), q = (0.5, 0.5): m = (0.75, 0.25)
    kl_q = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    by_hand = 0.5 * math.log2(1 / 0.75) + 0.5 * kl_q
    assert jensen_shannon({"a": 2}, {"a": 1, "b": 1}) == pytest.approx(by_hand)


def test_histogram_psi_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    same = rng.normal(0, 1, 5000)
    shifted = rng.normal(1.0, 1, 5000)
    assert histogram_psi(ref, same) < 0.05
    assert histogram_psi(ref, shifted) > 0.25


def test_embedding_drift_identical_and_rotated() -> None:
    rng = np.random.default_rng(1)
    users = rng.normal(size=(20, 8))
    items = rng.normal(size=(50, 8))
    same = embedding_drift(users, users, items, items, k=10)
    assert same.mean_cosine_shift == pytest.approx(0.0, abs=1e-9)
    assert same.topk_overlap == pytest.approx(1.0)
    flipped = embedding_drift(users, -users, items, items, k=10)
    assert flipped.mean_cosine_shift == pytest.approx(2.0)
    assert flipped.topk_overlap < 0.3  # top-k becomes the bottom-k


def test_embedding_drift_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        embedding_drift(np.zeros((2, 4)), np.zeros((3, 4)), np.zeros((5, 4)), np.zeros((5, 4)))


def test_windowed_distribution_closes_on_watermark() -> None:
    tracker = WindowedEntityDistribution(window_s=60, lateness_s=30)
    assert tracker.observe("u1", ["kb:A", "kb:B"], 0) == []
    assert tracker.observe("u2", ["kb:A"], 70) == []  # watermark 40: window 0 still open
    assert tracker.observe("u3", ["kb:A", "kb:B"], 10) == []  # out of order, still counted
    assert tracker.observe("u4", ["kb:A"], 95) == []  # watermark 65 closes window 0 (first)
    tracker.observe("u5", ["kb:A", "kb:B"], 100)
    # window 1 = {u2: A, u4: A, u5: A B} vs window 0 = {u1: A B, u3: A B}
    [(psi_value, js_value)] = tracker.observe("u6", ["kb:Z"], 200)
    assert psi_value > 0 and 0 < js_value < 1
    assert tracker.observe("u7", ["kb:A"], 5) == [] and tracker.late == 1


def test_windowed_distribution_identical_windows_have_no_drift() -> None:
    tracker = WindowedEntityDistribution(window_s=10, lateness_s=0)
    results = []
    for ts in (0, 10, 20, 30):
        results += tracker.observe("u1", ["kb:A"], ts)
        results += tracker.observe("u2", ["kb:B"], ts + 1)
    assert [round(p, 9) for p, _ in results] == [0.0, 0.0]
