"""Backfill throughput against `mekb produce` on the same log, the same broker, the same run.

    nice -n 10 python bench/bench_backfill.py [--events 60000] [--repeat 3] [--no-worker]

The log (synthetic, streams/synthetic.py) is written as items.jsonl.gz and
interactions.jsonl.gz. Per repeat, each on fresh topics of one embedded Tansu broker
(4 partitions):
1. producer side, no worker: `mekb.produce.produce_file` of both files (the baseline)
   against `mekb.backfill.backfill(wait=False)` of the directory (order check, k-way merge,
   validation, batched sends): events sent per second;
2. end to end, with a `mekb worker` process (unless --no-worker): the baseline produces the
   items, waits until the worker linked them, produces the interactions and waits until
   the worker handled every one (its /metrics); the backfill (flow control on, default
   --max-lag) returns when the worker committed everything. Events applied per second,
   from the first record sent to the last one handled, worker start-up excluded.
Medians of --repeat runs; the ratios are backfill over produce of the same repeat.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_streams import WorkerProc  # noqa: E402

from mekb.backfill import backfill  # noqa: E402
from mekb.broker import EmbeddedBroker  # noqa: E402
from mekb.produce import produce_file  # noqa: E402
from mekb.settings import Settings  # noqa: E402
from mekb.topics import create_topics  # noqa: E402
from streams.synthetic import EventLog, alias_rows, generate  # noqa: E402


def write_log(log: EventLog, root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "items.jsonl.gz", "wt") as fh:
        for item in log.items:
            fh.write(json.dumps(item) + "\n")
    with gzip.open(root / "interactions.jsonl.gz", "wb") as fh:
        fh.write(b"\n".join(log.interactions) + b"\n")
    return len(log.items) + len(log.interactions)


def fresh(base: Settings, work: Path) -> Settings:
    prefix = f"bf{uuid.uuid4().hex[:8]}-"
    settings = Settings(**{**base.model_dump(), "topic_prefix": prefix,
                           "data_dir": work / prefix})
    create_topics(settings)
    return settings


def producer_side(base: Settings, work: Path, history: Path, n: int) -> dict[str, float]:
    s = fresh(base, work)
    started = time.perf_counter()
    for name in ("items.jsonl.gz", "interactions.jsonl.gz"):
        produce_file(s, history / name, progress=False)
    produce = n / (time.perf_counter() - started)
    s = fresh(base, work)
    started = time.perf_counter()
    report = backfill(s, history, wait=False, progress=False)
    assert report.total_sent == n, report.summary()
    return {"produce_send": produce, "backfill_send": n / (time.perf_counter() - started)}


def end_to_end(base: Settings, work: Path, history: Path, alias: Path, log: EventLog
               ) -> dict[str, float]:
    out = {}
    for mode in ("produce", "backfill"):
        s = fresh(base, work)
        worker = WorkerProc(s, alias, work / f"{s.topic_prefix}worker.log")
        try:
            worker.wait(lambda w=worker: "mekb_streams_items" in w.metrics(), "worker up")
            started = time.perf_counter()
            if mode == "produce":
                produce_file(s, history / "items.jsonl.gz", progress=False)
                worker.wait(lambda w=worker: w.metrics().get("mekb_streams_items")
                            == len(log.items), "items linked")
                produce_file(s, history / "interactions.jsonl.gz", progress=False)
                done = worker.wait(lambda w=worker: w.handled() >= len(log.interactions),
                                   "all events", timeout_s=600, every=0.25)
            else:
                backfill(s, history, progress=False)
                done = time.perf_counter()
                assert worker.handled() >= len(log.interactions)
            out[f"{mode}_applied"] = (len(log.items) + len(log.interactions)) / (done - started)
        finally:
            worker.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-worker", action="store_true", help="Producer side only.")
    args = ap.parse_args()
    log = generate(n_users=2000, n_items=500, n_events=args.events, n_entities=200, seed=7)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        work = Path(tmp)
        history = work / "history"
        n = write_log(log, history)
        alias = work / "alias"
        from linker.alias_table import AliasTable

        AliasTable.build(alias, alias_rows(200)).close()
        with EmbeddedBroker(log_path=work / "broker.log") as broker:
            base = Settings(bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
                            partitions=4, data_dir=work / "data")
            for r in range(args.repeat):
                row = producer_side(base, work, history, n)
                if not args.no_worker:
                    row.update(end_to_end(base, work, history, alias, log))
                rows.append(row)
                print(f"repeat {r + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in row.items()),
                      flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    summary = {"events": n, "repeat": args.repeat, **{k: round(v) for k, v in med.items()},
               "send_ratio": round(statistics.median(
                   r["backfill_send"] / r["produce_send"] for r in rows), 2)}
    if not args.no_worker:
        summary["applied_ratio"] = round(statistics.median(
            r["backfill_applied"] / r["produce_applied"] for r in rows), 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
