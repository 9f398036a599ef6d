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


def test_windowed_distribution_reports_on_window_close() -> None:
    tracker = WindowedEntityDistribution(window_s=60)
    assert tracker.observe("u1", ["kb:A", "kb:B"], 0) is None
    assert tracker.observe("u2", ["kb:A"], 30) is None
    # first window closes: nothing to compare with yet
    assert tracker.observe("u1", ["kb:A", "kb:B"], 61) is None
    tracker.observe("u2", ["kb:A"], 62)
    # second window closes: same distribution as the first
    stable = tracker.observe("u3", ["kb:Z"], 125)
    assert stable is not None and stable[0] == pytest.approx(0.0, abs=1e-9)
    tracker.observe("u4", ["kb:Z"], 126)
    moved = tracker.observe("u1", ["kb:A"], 190)
    assert moved is not None and moved[0] > 1 and moved[1] == pytest.approx(1.0)
