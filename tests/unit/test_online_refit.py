from __future__ import annotations

import numpy as np

from trainer.online.refit import initial_table, refit_items


def planted(n_users: int = 400, n_items: int = 30, dim: int = 16, seed: int = 1):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((n_items, dim)).astype(np.float32)
    users = rng.standard_normal((n_users, dim)).astype(np.float32) * 3
    ids = [f"i{j}" for j in range(n_items)]
    # the positive of each user: its best item under the hidden table, movies only
    domains = ["movies"] * 20 + ["books"] * 10
    targets = [ids[int(np.argmax(truth[:20] @ u))] for u in users]
    return users, ids, domains, targets


def top1(users: np.ndarray, table: np.ndarray, targets: list[str], ids: list[str]) -> float:
    pred = np.argmax(users @ table[:20].T, axis=1)
    return float(np.mean([ids[p] == t for p, t in zip(pred, targets, strict=True)]))


def test_refit_fits_fixed_users_with_full_softmax() -> None:
    users, ids, domains, targets = planted()
    init = initial_table(ids, 16, sources=[], seed=3)
    before = top1(users, init, targets, ids)
    res = refit_items(users, targets, ["movies"] * len(targets), ids, domains, init,
                      epochs=30, lr=0.05, batch_size=64)
    assert res.n_examples == len(targets)
    assert res.loss_after < 0.5 * res.loss_before
    assert top1(users, res.table, targets, ids) > max(0.8, before + 0.3)
    # books were never a target domain: untouched
    np.testing.assert_array_equal(res.table[20:], init[20:])


def test_unknown_targets_are_ignored_and_empty_window_is_a_no_op() -> None:
    users, ids, domains, targets = planted(n_users=20)
    init = initial_table(ids, 16, sources=[], seed=0)
    res = refit_items(users[:2], ["zzz", "yyy"], ["movies"] * 2, ids, domains, init,
                      epochs=2, lr=0.1)
    assert res.n_examples == 0
    np.testing.assert_array_equal(res.table, init)


def test_initial_table_prefers_earlier_sources() -> None:
    first = (["a"], np.full((1, 4), 1.0, np.float32))
    second = (["a", "b"], np.stack([np.full(4, 2.0), np.full(4, 3.0)]).astype(np.float32))
    wrong_dim = (["c"], np.ones((1, 5), np.float32))
    table = initial_table(["a", "b", "c"], 4, sources=[first, second, wrong_dim], seed=0)
    assert table[0].tolist() == [1.0] * 4 and table[1].tolist() == [3.0] * 4
    assert np.abs(table[2]).max() < 0.2  # random small init
