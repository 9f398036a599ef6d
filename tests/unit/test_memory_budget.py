"""streams/memory_budget.py: the estimate's arithmetic and that no budget means no check.
(The refusal through a real worker and broker: tests/integration/test_worker_memory_budget.py.)"""

from __future__ import annotations

from mekb.settings import Settings
from streams.memory_budget import BASE_MB, DF_BYTES, ITEM_BYTES, MIB, USER_BYTES, Estimate, check


def test_estimate_sums_every_term_and_names_them() -> None:
    est = Estimate(items=100_000, df_partials=64 * 200_000, cache_users=200_000)
    expected = (100_000 * ITEM_BYTES + 64 * 200_000 * DF_BYTES + 200_000 * USER_BYTES) / MIB
    assert abs(est.total_mb - (expected + BASE_MB)) < 1e-6
    text = est.describe()
    for part in ("item table 100,000 items", "df table 12,800,000 partials",
                 "user cache 200,000 users", f"process {BASE_MB} MiB"):
        assert part in text


def test_no_budget_asks_nothing_of_the_broker() -> None:
    # an address nothing listens on: a check that contacted it would hang or fail
    assert check(Settings(bootstrap_servers="127.0.0.1:1")) is None
