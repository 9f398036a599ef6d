"""What decay and the user TTL cost the MeKB agent's partition core, in-process.

    nice -n 10 python bench/bench_retention.py [--events 60000] [--repeat 5]

One partition (`streams.partition.MeKBPartition`) over an in-memory store takes the
same synthetic log (5 % duplicates, 10 % negative, a third of the items in the target
domain, examples of 64 entities) in batches of 5 000, four ways: both off (the
default), MEKB_DECAY_HALF_LIFE_S=3600, MEKB_USER_TTL_S=600, both. No broker, no
RocksDB: the figure is the core's CPU cost, which is what the settings change (the
worker's I/O per batch does not depend on them). Medians of --repeat runs, the order
of the configurations alternating between runs; ratios against "off" of the same runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.catalog import ItemCatalog, LinkedItem  # noqa: E402
from streams.config import StreamConfig  # noqa: E402
from streams.dftable import DfTable  # noqa: E402
from streams.partition import InRecord, MeKBPartition, store_prefix  # noqa: E402
from streams.state.memory import MemoryStore  # noqa: E402
from streams.synthetic import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    log = generate(n_users=args.users, n_items=500, n_events=args.events, n_entities=200,
                   seed=1, dup_rate=0.05)
    rng = random.Random(0)
    catalog = ItemCatalog()
    for x in log.items + log.late_items:  # four entities of 300 per item
        catalog.put(LinkedItem(str(x["item_id"]), str(x["domain"]), tuple(
            (f"kb:E{rng.randrange(300)}", "E", 1.0) for _ in range(4)), "bench"))
    catalog.take_fresh()
    records = [InRecord(i, k, v) for i, (k, v) in enumerate(zip(log.keys, log.interactions,
                                                                  strict=True))]
    base = {"target_domains": frozenset({"action"}), "example_entities": 64}
    configs = {
        "off": StreamConfig(**base),  # type: ignore[arg-type]
        "decay": StreamConfig(**base, decay_half_life_s=3600.0),  # type: ignore[arg-type]
        "ttl": StreamConfig(**base, user_ttl_s=600.0),  # type: ignore[arg-type]
        "decay+ttl": StreamConfig(**base, decay_half_life_s=3600.0,  # type: ignore[arg-type]
                                  user_ttl_s=600.0),
    }

    def run(config: StreamConfig) -> float:
        store = MemoryStore()
        part = MeKBPartition(0, store, config, catalog, DfTable())
        part.load()
        started = time.perf_counter()
        for s in range(0, len(records), 5000):
            plan = part.process(records[s:s + 5000], (), 1000.0)
            store.write({store_prefix(0) + k: v for k, v in plan.changes.items()})
        return len(records) / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {name: [] for name in configs}
    for n in range(args.repeat):
        order = list(configs.items())
        for name, config in order[::-1] if n % 2 else order:
            rates[name].append(run(config))
    off = statistics.median(rates["off"])
    print(f"{len(records)} records, {args.users} users, medians of {args.repeat} runs")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:10s} {median:9.0f} records/s  x{median / off:.2f}")


if __name__ == "__main__":
    main()
