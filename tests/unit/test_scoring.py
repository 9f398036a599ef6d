"""Scoring against values computed by hand from the paper's formulas."""

from __future__ import annotations

import math

import pytest

from mekb.scoring import SEPARATOR, idf, mekb_scores, sequence_text, smooth


@pytest.mark.parametrize(
    ("k", "k_star", "expected"),
    [
        (0, 5, 0.0),
        (3, 5, 3.0),
        (5, 5, 5.0),
        (10, 5, 5 * (1 + math.log(2))),  # 8.4657...
        (50, 5, 5 * (1 + math.log(10))),  # 16.5129...
        (2.5, 2, 2 * (1 + math.log(1.25))),
    ],
)
def test_smooth(k: float, k_star: float, expected: float) -> None:
    assert smooth(k, k_star) == pytest.approx(expected)


def test_smooth_is_continuous_and_monotone_at_threshold() -> None:
    assert smooth(5.0000001, 5) == pytest.approx(5.0, abs=1e-6)
    values = [smooth(k / 10, 5) for k in range(0, 300)]
    assert values == sorted(values)


def test_idf() -> None:
    assert idf(1, 100) == pytest.approx(math.log(100))
    assert idf(25, 100) == pytest.approx(math.log(4))
    assert idf(100, 100) == 0.0
    assert idf(0, 100) == 0.0


def test_mekb_score_by_hand() -> None:
    # N = 10 users. Entity a: k=10, df=1; b: k=2, df=5; c: k=1, df=10 (everyone).
    counts = {"a": 10, "b": 2, "c": 1}
    df = {"a": 1, "b": 5, "c": 10}
    sa = 5 * (1 + math.log(2)) * math.log(10)
    sb = 2 * math.log(2)
    total = sa + sb
    scores = mekb_scores(counts, df, 10, k_star=5)
    assert [s.entity_id for s in scores] == ["a", "b", "c"]
    assert scores[0].score == pytest.approx(sa / total)
    assert scores[1].score == pytest.approx(sb / total)
    assert scores[2].score == 0.0
    assert sum(s.score for s in scores) == pytest.approx(1.0)


def test_idf_downweights_popular_entities_over_raw_count() -> None:
    scores = mekb_scores({"popular": 4, "niche": 2}, {"popular": 90, "niche": 2}, 100)
    assert scores[0].entity_id == "niche"


def test_all_zero_idf_falls_back_to_frequency() -> None:
    scores = mekb_scores({"x": 3, "y": 1}, lambda e: 1, 1)
    assert [(s.entity_id, round(s.score, 6)) for s in scores] == [("x", 0.75), ("y", 0.25)]


def test_ties_are_deterministic_and_empty_is_empty() -> None:
    scores = mekb_scores({"b": 1, "a": 1}, {"a": 1, "b": 1}, 4)
    assert [s.entity_id for s in scores] == ["a", "b"]
    assert mekb_scores({}, {}, 10) == []
    assert mekb_scores({"a": 0}, {"a": 1}, 10) == []


def test_sequence_text_orders_and_caps() -> None:
    text = sequence_text(["Inception", "Christopher Nolan"])
    assert text == f"Inception{SEPARATOR}Christopher Nolan"
    titles = [f"t{i}" for i in range(500)]
    assert sequence_text(titles, max_tokens=8).count("[SEP]") == 3


@pytest.mark.parametrize("seed", range(3))
def test_rank_memo_equals_rank_as_a_mekb_changes(seed: int) -> None:
    import random

    from mekb.scoring import RankMemo, rank

    rng = random.Random(seed)
    idfs = {f"e{i}": rng.choice((0.5, 1.0, 2.0, math.log(7))) for i in range(30)}
    counts: dict[str, float] = {}
    memo = RankMemo()
    for _ in range(300):
        touched = {f"e{rng.randrange(30)}" for _ in range(rng.randint(1, 4))}
        for e in touched:
            counts[e] = counts.get(e, 0.0) + rng.choice((0.3, 1.0, 2.0))
        gone = [e for e in list(counts) if len(counts) > 12 and rng.random() < 0.05]
        for e in gone:
            del counts[e]
        memo.changed(touched)
        memo.removed(gone)
        limit = rng.choice((0, 0, 1, 5))
        got = memo.rank(counts, idfs.__getitem__, lambda e, k: {"id": e, "k": k}, limit=limit)
        assert got is not None
        want = rank(counts, idfs.__getitem__)
        assert [(o["id"], o["score"]) for o in got] == want[:limit or None]
        assert all(o["k"] == counts[str(o["id"])] for o in got)
    assert RankMemo().rank({"a": 1.0}, lambda e: 0.0, lambda e, k: {}) is None


def test_rank_does_not_depend_on_the_order_entities_were_counted_in() -> None:
    import random

    from mekb.scoring import rank

    rng = random.Random(7)
    # Weights of many magnitudes, where a float sum in another order rounds differently.
    counts = {f"e{i}": rng.choice((0.1, 0.3, 7.0, 1e3, 1e6)) * rng.random() for i in range(128)}
    idfs = {e: rng.choice((0.01, 0.7, 3.0)) for e in counts}
    want = rank(counts, idfs.__getitem__)
    for _ in range(5):
        keys = list(counts)
        rng.shuffle(keys)
        assert rank({e: counts[e] for e in keys}, idfs.__getitem__) == want  # bit for bit
