"""The stream worker's memory budget (MEKB_WORKER_MEMORY_BUDGET_MB), checked at start.

What a worker holds in memory grows with three things, not with its users (RocksDB
holds those on disk):
- the item table: every linked item of `item-entities`, on EVERY worker (a GlobalTable
  replica, not split by partition), ~ITEM_BYTES each;
- the df table: every `df-partials` record (one per partition and entity), ~DF_BYTES each;
- the decoded-user cache: up to MEKB_WORKER_CACHE_USERS users, ~USER_BYTES each;
plus the process itself (Python, the linker, RocksDB's block cache and memtables),
BASE_MB. The per-entry figures are tracemalloc measurements of this code's real
structures (bench/bench_scale.py measures them again at size and reports them beside
these constants; docs/scaling.md). The record counts come from the two compacted
topics' offsets, so the estimate is an upper bound until the broker compacts them (on
the embedded Tansu, ListOffsets LATEST can miss the last multi-record batch of a
partition: a little under the count there).

A worker whose estimate exceeds the budget refuses to start with one line that names
every term, rather than swap: the item and df tables are the same on every worker, so
adding workers does not shrink them — the budget must grow, or the user cache shrink.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mekb.settings import Settings

logger = logging.getLogger(__name__)

MIB = 1 << 20
# tracemalloc of ItemCatalog / DfTable as bench/bench_scale.py builds them from the topics
# (1,457 B/item at 4.5 entities/item: product, 1-3 categories, 1-2 kb entities; 226 B per
# df slot), rounded up; a decoded UserState of ~20 events: ~7 kB.
ITEM_BYTES = 1_600
DF_BYTES = 230
USER_BYTES = 7_000
# An idle `mekb worker` with the default dbpedia linker: VmRSS 70 MiB; plus two in-flight
# batches of MEKB_WORKER_BATCH_MAX (10,000) events and their outputs: the peak RSS of a
# run of 2,000 users (146 MiB) less idle and cache.
BASE_MB = 150


class MemoryBudgetError(RuntimeError):
    """The worker's share does not fit MEKB_WORKER_MEMORY_BUDGET_MB."""


@dataclass(frozen=True)
class Estimate:
    items: int
    df_partials: int
    cache_users: int

    @property
    def terms_mb(self) -> dict[str, float]:
        return {
            "item table": self.items * ITEM_BYTES / MIB,
            "df table": self.df_partials * DF_BYTES / MIB,
            "user cache": self.cache_users * USER_BYTES / MIB,
            "process": float(BASE_MB),
        }

    @property
    def total_mb(self) -> float:
        return sum(self.terms_mb.values())

    def describe(self) -> str:
        t = self.terms_mb
        return (f"item table {self.items:,} items × {ITEM_BYTES} B = {t['item table']:,.0f} MiB"
                f" + df table {self.df_partials:,} partials × {DF_BYTES} B = "
                f"{t['df table']:,.0f} MiB + user cache {self.cache_users:,} users × "
                f"{USER_BYTES} B = {t['user cache']:,.0f} MiB + process {BASE_MB} MiB")


def topic_records(settings: Settings, names: list[str]) -> dict[str, int]:
    """Records in each topic (end - beginning offsets, every partition): an upper bound
    of the live keys of a compacted topic. A missing topic counts 0."""
    from kafka import KafkaConsumer, TopicPartition

    from mekb.kafka_config import kafka_python_config

    consumer = KafkaConsumer(**kafka_python_config(settings), group_id=None,
                             enable_auto_commit=False)
    try:
        out: dict[str, int] = {}
        for name in names:
            parts = consumer.partitions_for_topic(settings.topic(name)) or set()
            tps = [TopicPartition(settings.topic(name), p) for p in sorted(parts)]
            if not tps:
                out[name] = 0
                continue
            begin = consumer.beginning_offsets(tps)
            end = consumer.end_offsets(tps)
            out[name] = sum(max(0, end[tp] - begin[tp]) for tp in tps)
        return out
    finally:
        consumer.close()


def estimate(settings: Settings) -> Estimate:
    counts = topic_records(settings, ["item-entities", "df-partials"])
    return Estimate(counts["item-entities"], counts["df-partials"], settings.worker_cache_users)


def check(settings: Settings) -> Estimate | None:
    """Raise MemoryBudgetError when the estimate exceeds the configured budget; None when
    no budget is configured (nothing is asked of the broker then)."""
    budget = settings.worker_memory_budget_mb
    if not budget:
        return None
    est = estimate(settings)
    if est.total_mb > budget:
        raise MemoryBudgetError(
            f"worker memory estimate {est.total_mb:,.0f} MiB exceeds "
            f"MEKB_WORKER_MEMORY_BUDGET_MB={budget:,} ({est.describe()}); raise the budget "
            "or lower MEKB_WORKER_CACHE_USERS (more workers do not help: every worker holds "
            "the whole item and df tables; docs/scaling.md)")
    logger.info("worker memory estimate %.0f MiB within budget %d MiB (%s)", est.total_mb,
                budget, est.describe())
    return est
