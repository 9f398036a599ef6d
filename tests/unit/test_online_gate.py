from __future__ import annotations

import numpy as np
import pytest

from trainer.online.examples import Example, InvalidExample, parse_example
from trainer.online.gate import (
    Scorer,
    Scores,
    build_eval_set,
    decide,
    evaluate,
    rank_scores,
    run_gate,
)


class TableScorer(Scorer):
    """User vector = a fixed vector per example id (the test plants the geometry)."""

    def __init__(self, item_ids: list[str], items: np.ndarray, users: dict[str, np.ndarray]):
        self.item_ids, self.items, self.users = item_ids, items, users

    def user_embeddings(self, examples):  # type: ignore[no-untyped-def]
        return np.stack([self.users[e.example_id] for e in examples])


def ex(i: int, item: str, domain: str = "movies") -> Example:
    return Example(f"e{i}", f"u{i}", domain, item, 0.0, ("A", "B"))


def world(n_items: int = 50, dim: int = 8, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)  # the own item scores highest
    ids = [f"i{j}" for j in range(n_items)]
    examples = [ex(k, ids[k % n_items]) for k in range(40)]
    return ids, items, examples


def test_perfect_and_adversarial_scorers() -> None:
    ids, items, examples = world()
    good = TableScorer(ids, items, {e.example_id: items[ids.index(e.item_id)] * 10
                                    for e in examples})
    bad = TableScorer(ids, items, {e.example_id: -items[ids.index(e.item_id)] * 10
                                   for e in examples})
    evalset = build_eval_set(examples, ids, ["movies"] * len(ids), n_negatives=20)
    assert len(evalset.examples) == 40
    top = evaluate(good, evalset)
    assert top.hr10 == 1.0 and top.ndcg10 == pytest.approx(1.0)
    low = evaluate(bad, evalset)
    assert low.hr10 == 0.0 and low.ndcg10 == 0.0
    assert decide(top, low, 0.01).decision == "published"
    rejected = decide(low, top, 0.01)
    assert rejected.decision == "rejected" and not rejected.publish
    assert "HR@10" in rejected.reason


def test_eval_set_is_deterministic_and_in_domain() -> None:
    ids = [f"i{j}" for j in range(30)]
    domains = ["movies"] * 20 + ["books"] * 10
    examples = [ex(k, f"i{k}") for k in range(5)] + [ex(9, "i25", "books")]
    a = build_eval_set(examples, ids, domains, n_negatives=7)
    b = build_eval_set(examples, ids, domains, n_negatives=7)
    assert a.candidates == b.candidates
    for e, cands in zip(a.examples, a.candidates, strict=True):
        assert cands[0] == e.item_id and e.item_id not in cands[1:]
        assert len(set(cands)) == len(cands)
        want = "books" if e.domain == "books" else "movies"
        assert all(domains[ids.index(c)] == want for c in cands)
    assert all(len(c) == 8 for c in a.candidates)
    # books has only 9 other items: the sample is capped
    capped = build_eval_set(examples, ids, domains, n_negatives=15)
    assert len(capped.candidates[-1]) == 10 and len(capped.candidates[0]) == 16


def test_unknown_items_rank_last_for_the_model_that_lacks_them() -> None:
    items = np.eye(3, dtype=np.float32)
    index = {"a": 0, "b": 1, "c": 2}
    assert rank_scores(np.array([1, 0, 0], np.float32), ["a", "b", "c"], index, items) == 0
    assert rank_scores(np.array([0.5, 1, 0], np.float32), ["a", "b", "c"], index, items) == 1
    # ties count against the positive
    assert rank_scores(np.array([0, 1, 0], np.float32), ["a", "b", "c"], index, items) == 2
    # the positive is new to this model: a miss, whatever the user vector
    assert rank_scores(np.array([1, 0, 0], np.float32), ["new", "a", "b"], index, items) == 2
    # unknown negatives are simply not competitors
    assert rank_scores(np.array([1, 0, 0], np.float32), ["a", "new", "b"], index, items) == 0


def test_tolerance_and_gate_phases() -> None:
    base = Scores(0.50, 0.30, 100)
    assert decide(Scores(0.495, 0.295, 100), base, 0.01).decision == "published"
    assert decide(Scores(0.48, 0.30, 100), base, 0.01).decision == "rejected"
    assert decide(Scores(0.50, 0.28, 100), base, 0.01).decision == "rejected"
    ids, items, examples = world()
    scorer = TableScorer(ids, items, {e.example_id: items[0] for e in examples})
    kw = dict(item_domains=["movies"] * len(ids), n_negatives=10, tolerance=0.0)
    assert run_gate(scorer, None, examples, min_examples=1, **kw).decision == "initial"
    skipped = run_gate(scorer, scorer, examples[:3], min_examples=10, **kw)
    assert skipped.decision == "skipped" and skipped.publish
    same = run_gate(scorer, scorer, examples, min_examples=10, **kw)
    assert same.decision == "published"
    assert same.candidate == same.active and same.to_json()["candidate"]["n"] == 40


def test_parse_example() -> None:
    good = parse_example(b'{"v": 1, "example_id": "e1", "user_id": "u", "ts": 5, '
                         b'"domain": "action", "item_id": "i9", "mekb_version": 3, '
                         b'"entities": [{"id": "kb:A", "title": "Alpha", "score": 0.6}, '
                         b'{"id": "kb:B", "title": "Beta", "score": 0.4}]}')
    assert good.titles == ("Alpha", "Beta") and good.item_id == "i9" and good.ts == 5.0
    assert good.text(32) == "Alpha [SEP] Beta"
    assert Example.from_json(good.to_json()) == good
    assert good.mekb_size == 2 and not good.cut_short(512)  # no mekb_size: nothing cut
    cut = parse_example(b'{"v": 1, "example_id": "e1", "user_id": "u", "domain": "d", '
                        b'"item_id": "i", "mekb_size": 9, '
                        b'"entities": [{"id": "kb:A", "title": "Alpha", "score": 0.6}]}')
    assert cut.mekb_size == 9 and cut.cut_short(8) and not cut.cut_short(3)
    for size in (b"-1", b'"9"', b"true", b"1.5"):
        with pytest.raises(InvalidExample, match="mekb_size"):
            parse_example(b'{"v":1,"example_id":"e","user_id":"u","domain":"d","item_id":"i",'
                          b'"entities":[],"mekb_size":' + size + b"}")
    for bad in (b"", b"nope", b"[1]", b'{"v": 2}', b'{"v": 1, "example_id": "e"}',
                b'{"v":1,"example_id":"e","user_id":"u","domain":"d","item_id":"",'
                b'"entities":[]}'):
        with pytest.raises(InvalidExample):
            parse_example(bad)

