"""Scale: what state costs as users grow, measured through the real processes.

    nice -n 10 python bench/bench_scale.py [--users 100000] [--items 10000]
        [--events 1000000] [--partitions 4] [--json scale.json] [--model tiny|minilm]
        [--worker-only | --core]

One run on the embedded Tansu broker (mekb/broker.py) with a generated log:
- items: each title names one or two of --entities people of a generated alias table
  (the dictionary linker that `mekb worker` runs by default links them: kb, category
  and product entities), 1-3 categories;
- item popularity Zipf (s = 1.0 over item rank); user activity heavy-tailed: events per
  user lognormal (sigma 1.2) scaled to --events, users' events interleaved at random;
  10 % negative ratings.
Measured (bench_streams.WorkerProc and bench_serving.Server start the processes):
1. worker throughput as state grows: a `mekb worker` consumes the whole log; rate over
   the first and the last 10 % of the events (from its /metrics), CPU µs per event
   of the worker and of the broker;
2. RocksDB size per user: the worker's store on disk after it stopped / users;
3. restore from changelog: one partition's keys are deleted from the stopped worker's
   RocksDB, the worker restarted; the restore durations it reports
   (mekb_streams_restore_duration_seconds) against a restart that lost nothing;
4. serving replica: a `mekb serve` with an empty replica: start -> /readyz (caught up
   with mekb-updates) and the replica's size on disk; a restart of the same replica
   (resumes from its offsets) is the baseline;
5. item and df tables: the item-entities and df-partials topics decoded into the
   worker's own ItemCatalog and DfTable under tracemalloc (bytes per entry, against
   streams/memory_budget.py's constants); the worker's peak RSS;
6. trainer example rate: OnlineTrainer.process (the loop `mekb trainer` runs, via
   bench_trainer's helpers, EntityGraph kind) on the first --trainer-examples records of
   training-examples: a first pass (each new entity's title encoded into its row) and a
   second pass over the same records (rows exist: a live trainer's steady state);
7. p99 of a cache-miss embedding: sequential GETs of users never asked before on the
   caught-up replica (answers with `cached: true` — precomputed by the refresher — are
   counted apart). --model tiny (default) is the real ONNX Runtime on a tiny tower
   (isolates the replica lookup and service path at this size); --model minilm exports
   the real EmbedMe bundle (bench_serving.build_registry).
--worker-only stops after 1. (an A/B of the worker); --core measures the MeKB
partition core alone, in process, on the same log (`core`: where the worker's time
goes as state grows). Prints a table and writes the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_serving  # noqa: E402
import bench_streams  # noqa: E402
from bench_streams import WorkerProc, cpu_seconds, peak_rss_mib  # noqa: E402

from mekb.broker import EmbeddedBroker  # noqa: E402
from mekb.settings import Settings  # noqa: E402
from mekb.topics import create_topics  # noqa: E402

FIRST = ("Alma", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
         "Kira", "Lars", "Mira", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara")
MIDDLE = ("Ash", "Bay", "Cole", "Dale", "Eli", "Finn", "Gray", "Hale", "Ives", "Jude",
          "Kane", "Lee", "Max", "Noel", "Orin", "Penn", "Reed", "Sage", "Tate", "Wade")
LAST = ("Anders", "Brook", "Castell", "Dorne", "Ekberg", "Falk", "Grove", "Holm", "Ivers",
        "Jarl", "Kest", "Lind", "Morrow", "Norde", "Orwell", "Pike", "Quast", "Rook", "Stahl",
        "Thorne")
CATEGORIES = ("Action", "Drama", "Comedy", "Sci-Fi", "Horror", "Romance", "War", "Western",
              "Crime", "Musical")
ITEM_ZIPF_S = 1.0
USER_SIGMA = 1.2


def progress(total: float, desc: str) -> Any:
    """A tqdm bar when tqdm is installed, else a no-op with the same calls."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit_scale=True, dynamic_ncols=True, leave=False)
    except ImportError:
        class Quiet:
            n = 0.0

            def update(self, n: float) -> None:
                self.n += n

            def close(self) -> None:
                pass
        return Quiet()


def people(n: int) -> list[str]:
    names = [f"{f} {m} {last}" for last in LAST for m in MIDDLE for f in FIRST]
    if n > len(names):
        raise SystemExit(f"--entities: at most {len(names)}")
    return names[:n]


CHUNK = 200_000  # interaction records encoded (and produced) at a time


def generate(users: int, items: int, events: int, entities: int, seed: int
             ) -> tuple[list[tuple[bytes, bytes]], Iterator[list[tuple[bytes, bytes]]],
                        dict[str, Any]]:
    """(item records, interaction records in chunks of CHUNK, shape of the log). The
    interactions are encoded chunk by chunk as they are consumed, so a log of 10^7
    events is never held in this process at once (its JSON would take gigabytes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    names = people(entities)
    item_rows = []
    for i in range(items):
        mentioned = pyrng.sample(names, pyrng.choice((1, 2)))
        item = {"item_id": f"i{i}", "domain": "action" if i % 3 == 0 else "drama", "ts": 1.0,
                "title": f"The story of {' and '.join(mentioned)}",
                "categories": pyrng.sample(CATEGORIES, pyrng.choice((1, 2, 3)))}
        item_rows.append((f"i{i}".encode(), json.dumps(item).encode()))
    # Heavy-tailed activity: lognormal weights, every user at least one event.
    weights = rng.lognormal(0.0, USER_SIGMA, users)
    per_user = np.maximum(1, np.round(weights / weights.sum() * events)).astype(np.int64)
    order = np.repeat(np.arange(users), per_user)
    rng.shuffle(order)
    order = order[:events]
    ranks = 1.0 / np.arange(1, items + 1) ** ITEM_ZIPF_S
    item_of = rng.choice(items, size=len(order), p=ranks / ranks.sum())
    negative = rng.random(len(order)) < 0.1
    domains = ["action" if i % 3 == 0 else "drama" for i in range(items)]

    def chunks() -> Iterator[list[tuple[bytes, bytes]]]:
        bar = progress(len(order), "generate")
        for lo in range(0, len(order), CHUNK):
            records = []
            for n, u, it, neg in zip(range(lo, lo + CHUNK), order[lo:lo + CHUNK].tolist(),
                                     item_of[lo:lo + CHUNK].tolist(),
                                     negative[lo:lo + CHUNK].tolist(), strict=False):
                user = f"u{u}"
                records.append((user.encode(), json.dumps({
                    "event_id": f"e{n}", "user_id": user, "item_id": f"i{it}",
                    "domain": domains[it], "action": "rate", "ts": 1000.0 + n,
                    "rating": 2.0 if neg else 5.0,
                }).encode()))
            bar.update(len(records))
            yield records
        bar.close()

    counts = np.bincount(order, minlength=users)
    shape = {"events": len(order), "users_with_events": int((counts > 0).sum()),
             "events_per_user_p50": float(np.median(counts[counts > 0])),
             "events_per_user_p99": float(np.percentile(counts[counts > 0], 99)),
             "events_per_user_max": int(counts.max()),
             "top_1pct_items_share": float(np.sort(np.bincount(item_of, minlength=items))[
                 ::-1][:max(1, items // 100)].sum() / len(order))}
    return item_rows, chunks(), shape


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def crossing(samples: list[tuple[float, float]], level: float) -> float:
    """The time the handled count reached `level` (linear between polls)."""
    for (t0, h0), (t1, h1) in zip(samples, samples[1:], strict=False):
        if h1 >= level:
            return t0 + (t1 - t0) * ((level - h0) / (h1 - h0) if h1 > h0 else 1.0)
    return samples[-1][0]


def process_log(worker: WorkerProc, n: int, broker_pid: int | None) -> dict[str, float]:
    bar = progress(n, "worker")
    samples: list[tuple[float, float]] = []
    worker.wait(lambda: worker.handled() > 0, "first batch", timeout_s=300, every=0.05)
    cpu0 = cpu_seconds(worker.proc.pid), cpu_seconds(broker_pid)
    deadline = time.monotonic() + 7200
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise SystemExit(f"worker exited: {worker.log.read_text()[-3000:]}")
        h = worker.handled()
        samples.append((time.perf_counter(), h))
        bar.update(h - bar.n)
        if h >= n:
            break
        time.sleep(0.5)  # a /metrics scrape costs the worker CPU (bench_streams.py)
    bar.close()
    cpu1 = cpu_seconds(worker.proc.pid), cpu_seconds(broker_pid)
    h0 = samples[0][1]
    t10, t90 = crossing(samples, h0 + 0.1 * (n - h0)), crossing(samples, h0 + 0.9 * (n - h0))
    t0, t1 = samples[0][0], samples[-1][0]
    done = n - h0
    return {
        "rate_events_s": done / (t1 - t0),
        "rate_first_10pct": 0.1 * done / max(1e-9, t10 - t0),
        "rate_last_10pct": 0.1 * done / max(1e-9, t1 - t90),
        "worker_cpu_us_per_event": (cpu1[0] - cpu0[0]) / done * 1e6,
        "broker_cpu_us_per_event": (cpu1[1] - cpu0[1]) / done * 1e6,
        "worker_peak_rss_mib": worker.peak_rss_mib(),
    }


def restore_sum(worker: WorkerProc) -> tuple[float, float]:
    m = worker.metrics()
    return (m.get("mekb_streams_restore_duration_seconds_sum", 0.0),
            m.get("mekb_streams_restore_duration_seconds_count", 0.0))


def restart(settings: Settings, alias: Path, work: Path, name: str, partitions: int
            ) -> tuple[dict[int, tuple[int, float]], float]:
    """Start the worker on its existing store; ({partition: (changelog records applied,
    restore seconds)} from its log, wall seconds to all partitions restored)."""
    started = time.perf_counter()
    log = work / f"{name}.log"
    worker = WorkerProc(settings, alias, log, log_level="INFO")
    try:
        worker.wait(lambda: restore_sum(worker)[1] >= partitions, "restore", timeout_s=1800,
                    every=0.2)
        wall = time.perf_counter() - started
    finally:
        worker.stop()
    found = re.findall(r"partition (\d+) ready: (\d+) changelog records applied in "
                       r"([\d.]+)s", log.read_text(errors="replace"))
    return {int(p): (int(n), float(s)) for p, n, s in found}, wall


def drop_partition(settings: Settings, partition: int) -> int:
    """Delete partition `partition`'s keys from the stopped worker's RocksDB."""
    from streams.partition import store_prefix
    from streams.state.rocksdb import RocksDBStore

    store = RocksDBStore(settings.data_dir / "streams" / "bench")
    try:
        keys = [k for k, _ in store.scan(store_prefix(partition))]
        for i in range(0, len(keys), 10_000):
            store.write(dict.fromkeys(keys[i:i + 10_000]))
        return len(keys)
    finally:
        store.close()


def read_topic(settings: Settings, topic: str, limit: int | None = None) -> list[Any]:
    """Records of `topic` (markers skipped), every partition, at most `limit`."""
    from kafka import KafkaConsumer

    from mekb.kafka_config import kafka_python_config
    from streams.kafka_io import MARKER

    consumer = KafkaConsumer(
        settings.topic(topic), **kafka_python_config(settings), auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 << 20)
    records: list[Any] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < 2.0 and (limit is None or len(records) < limit):
            for batch in consumer.poll(timeout_ms=200, max_records=10_000).values():
                records.extend(r for r in batch if r.key != MARKER)
                last = time.monotonic()
    finally:
        consumer.close()
    return records[:limit]


def table_memory(settings: Settings) -> dict[str, float]:
    from streams.catalog import ItemCatalog, LinkedItem
    from streams.dftable import DfTable

    items = [r.value for r in read_topic(settings, "item-entities") if r.value]
    partials = [(r.key, r.value) for r in read_topic(settings, "df-partials") if r.value]
    tracemalloc.start()
    catalog = ItemCatalog()
    for raw in items:
        catalog.put(LinkedItem.decode(raw))
    item_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tracemalloc.start()
    df = DfTable()
    for key, value in partials:
        df.apply(key, value)
    df_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    slots = len(df.partials)  # live (partition, entity) slots: what a worker holds
    ents = [len(i.entities) for i in catalog.items.values()]
    return {"items": len(catalog), "item_table_mib": item_bytes / 2**20,
            "bytes_per_item": item_bytes / max(1, len(catalog)),
            "entities_per_item": statistics.mean(ents) if ents else 0.0,
            "df_entities": len(df.df), "df_partials": slots, "df_partial_records": len(partials),
            "df_table_mib": df_bytes / 2**20,
            "bytes_per_df_partial": df_bytes / max(1, slots), "n_users_df": df.n_users}


OUTPUT_TOPICS = ("interactions", "mekb-updates", "mekb-changelog", "training-examples",
                 "df-partials")


def broker_bytes(settings: Settings, events: int, sample: int = 2_000) -> dict[str, float]:
    """Bytes each topic received per input event: records (end - beginning offsets) ×
    the mean key + value size of its first `sample` records."""
    from streams.memory_budget import topic_records

    counts = topic_records(settings, list(OUTPUT_TOPICS))
    out: dict[str, float] = {}
    for topic in OUTPUT_TOPICS:
        recs = read_topic(settings, topic, sample)
        mean = statistics.mean(len(r.key or b"") + len(r.value or b"") for r in recs) \
            if recs else 0.0
        out[f"bytes_per_event_{topic.replace('-', '_')}"] = counts[topic] * mean / events
        out[f"records_{topic.replace('-', '_')}"] = counts[topic]
    return out


def trainer_rate(settings: Settings, n: int) -> dict[str, float]:
    import bench_trainer
    import torch

    from trainer.online.loop import Record

    torch.set_num_threads(1)
    recs = [Record(r.partition, r.offset, r.value)
            for r in read_topic(settings, "training-examples", n) if r.value]
    if not recs:
        return {"trainer_examples_fed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = bench_trainer._online_trainer("entitygraph", Path(tmp))
        # first pass: every new entity's title is encoded (MiniLM) into its row; second
        # pass over the same records: the rows exist (the steady state of a live trainer)
        first = bench_trainer._feed(trainer, recs)
        steady = bench_trainer._feed(trainer, recs)
    return {"trainer_first_pass_examples_s": first, "trainer_steady_examples_s": steady,
            "trainer_examples_fed": len(recs)}


def serving(settings: Settings, registry: Path, work: Path, users: list[str], misses: int
            ) -> dict[str, float]:
    import http.client

    server = bench_serving.Server(settings, registry, work / "serve.log")
    server.env["MEKB_SERVING_INTRA_OP_THREADS"] = "1"
    t0 = time.perf_counter()
    server.start(3600)  # returns at /readyz 200: model loaded and replica caught up
    catch_up = time.perf_counter() - t0
    replica = settings.data_dir / "serving" / "replica"
    out: dict[str, float] = {"replica_catch_up_s": catch_up}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        lat: list[float] = []
        cached = 0
        bar = progress(misses, "cache misses")
        for user in random.Random(3).sample(users, min(misses, len(users))):
            t = time.perf_counter()
            conn.request("GET", f"/v1/users/{user}/embedding",
                         headers={"X-API-Key": bench_serving.KEY})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            took = (time.perf_counter() - t) * 1000
            bar.update(1)
            if resp.status != 200:
                raise SystemExit(f"GET {user}: {resp.status} {body}")
            if body["cached"]:
                cached += 1
            else:
                lat.append(took)
        bar.close()
        lat.sort()
        out.update({"miss_p50_ms": lat[len(lat) // 2] if lat else math.nan,
                    "miss_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                    if lat else math.nan, "misses_measured": len(lat),
                    "answers_precomputed": cached})
    finally:
        server.stop()
    out["replica_disk_mib"] = du(replica) / 2**20
    t0 = time.perf_counter()
    server.start(3600)  # the same replica: resumes from its stored offsets
    out["replica_restart_s"] = time.perf_counter() - t0
    server.stop()
    return out


def build_registry(work: Path, model: str) -> Path:
    if model == "minilm":
        return bench_serving.build_registry(work, 64)
    from mekb.registry import Registry
    from serving.testing import write_tiny_bundle

    reg = Registry(work / "registry")
    version = bench_serving.V1
    reg.publish(write_tiny_bundle(work / "bundle", version=version, item_ids=["i0", "i1"],
                                  domains=["action", "drama"]))
    reg.activate(version)
    return reg.root


def run(args: argparse.Namespace) -> dict[str, Any]:
    from linker.alias_table import AliasTable

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    alias = work / "alias"
    if not alias.exists():
        AliasTable.build(alias, [(n, n, 10) for n in people(args.entities)]).close()
    item_rows, chunks, shape = generate(args.users, args.items, args.events, args.entities,
                                        args.seed)
    result: dict[str, Any] = {"users": args.users, "items": args.items,
                              "events": shape.pop("events"),
                              "partitions": args.partitions, "entities": args.entities,
                              "model": args.model, **shape}
    broker = EmbeddedBroker(log_path=work / "tansu.log").start()
    try:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
                            partitions=args.partitions, data_dir=work / "data",
                            topic_prefix="scale-")
        create_topics(settings)
        asyncio.run(bench_streams._produce(settings, "items", item_rows))
        linker = WorkerProc(settings, alias, work / "link.log")
        linker.wait(lambda: linker.metrics().get("mekb_streams_items") == len(item_rows),
                    "items linked", timeout_s=600)
        linker.stop()
        t = time.perf_counter()
        for records in chunks:  # encoded and produced a chunk at a time (bounded futures)
            asyncio.run(bench_streams._produce(settings, "interactions", records))
        result["generate_and_produce_events_s"] = result["events"] / (time.perf_counter() - t)

        worker = WorkerProc(settings, alias, work / "worker.log")
        try:
            result.update(process_log(worker, result["events"], broker.pid))
            health = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{worker.port}/healthz", timeout=10).read())
            result["users_with_state"] = int(health["users"])
        finally:
            worker.stop()
        # the embedded broker keeps every topic in memory (DESIGN.md), so its size after
        # the log bounds the largest log one machine can hold
        result["broker_peak_rss_mib"] = peak_rss_mib(broker.pid)
        if args.worker_only:
            return result
        store = settings.data_dir / "streams" / "bench"
        result["rocksdb_mib"] = du(store) / 2**20
        result["rocksdb_bytes_per_user"] = du(store) / max(1, result["users_with_state"])

        base, base_wall = restart(settings, alias, work, "restart-clean", args.partitions)
        result["restore_dropped_keys"] = drop_partition(settings, 0)
        lost, lost_wall = restart(settings, alias, work, "restart-lost-p0", args.partitions)
        result.update({"restore_partition_s": lost[0][1], "restore_changelog_records": lost[0][0],
                       "restore_clean_partition_s": base[0][1],
                       "restart_wall_clean_s": base_wall, "restart_wall_lost_p0_s": lost_wall})

        result.update(table_memory(settings))
        result.update(broker_bytes(settings, result["events"]))
        registry = build_registry(work, args.model)
        users = [f"u{u}" for u in range(args.users)]
        result.update(serving(settings, registry, work, users, args.misses))
        result.update(trainer_rate(settings, args.trainer_examples))
        result["bench_peak_rss_mib"] = peak_rss_mib(os.getpid())
    finally:
        broker.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return result


M_BINS = ((1, 8), (9, 16), (17, 32), (33, 64), (65, 127), (128, 128))


def core(args: argparse.Namespace) -> dict[str, Any]:
    """--core: the MeKB partition core alone, in this process (no broker, no Kafka
    client): the same log through MeKBPartition.process and one RocksDB WriteBatch per
    partition and batch (as StreamWorker._process and _write_local do), each batch's df
    partials applied before the next. µs per event over the first and last 10 % of the
    batches and the seconds of Python's cyclic GC in each; median µs of the per-user
    steps whose work grows with the MeKB, by MeKB size M: a training example and a
    mekb-update (timed on the partitions), a state encoding (timed on every user at
    the end)."""
    import gc

    from linker.alias_table import AliasTable
    from linker.factory import build_linker
    from serving.sharding import partition_for
    from streams.catalog import ItemCatalog
    from streams.config import StreamConfig
    from streams.dftable import DfTable
    from streams.items import link_items, prepare
    from streams.partition import LOCAL, InRecord, MeKBPartition, store_prefix
    from streams.state.rocksdb import RocksDBStore

    work = Path(tempfile.mkdtemp(prefix="bench-scale-core-"))
    try:
        AliasTable.build(work / "alias", [(n, n, 10) for n in people(args.entities)]).close()
        item_rows, chunks, shape = generate(args.users, args.items, args.events,
                                             args.entities, args.seed)
        settings = Settings(alias_table=work / "alias", data_dir=work / "data")
        catalog = ItemCatalog()
        linker = build_linker(settings)
        batch = prepare([InRecord(i, k, v, "items") for i, (k, v) in enumerate(item_rows)],
                        0, catalog)
        catalog.put_many(link_items(linker, batch.to_link))
        linker.close()
        store, table = RocksDBStore(work / "state"), DfTable()
        parts = [MeKBPartition(p, store, StreamConfig.from_settings(settings), catalog, table,
                               args.partitions) for p in range(args.partitions)]
        logs: list[list[InRecord]] = [[] for _ in parts]
        for records in chunks:
            for key, value in records:
                log = logs[partition_for(key.decode(), args.partitions)]
                log.append(InRecord(len(log), key, value))
        steps: dict[str, list[tuple[int, float]]] = {"example": [], "update": []}

        def timed(name: str, fn: Any, size: Any) -> Any:
            def call(*a: Any) -> Any:
                t = time.perf_counter()
                out = fn(*a)
                steps[name].append((size(a), time.perf_counter() - t))
                return out
            return call

        for part in parts:
            part.load()
            part.example_entities = timed(  # type: ignore[method-assign]
                "example", part.example_entities, lambda a: len(a[1]))
            part._update = timed("update", part._update,  # type: ignore[method-assign]
                                 lambda a: len(a[1].counts))
        gc_s = [0.0]
        gc_t = [0.0]

        def on_gc(phase: str, _info: dict[str, int]) -> None:
            if phase == "start":
                gc_t[0] = time.perf_counter()
            else:
                gc_s[0] += time.perf_counter() - gc_t[0]

        per = max(1, Settings().worker_batch_max // args.partitions)
        batches: list[tuple[int, float, float]] = []  # events, seconds, GC seconds
        catalog.take_fresh()
        gc.callbacks.append(on_gc)
        bar = progress(sum(map(len, logs)), "core")
        try:
            for b in range(-(-max(map(len, logs)) // per)):
                t, gc0, n = time.perf_counter(), gc_s[0], 0
                for part, log in zip(parts, logs, strict=True):
                    chunk = log[b * per:(b + 1) * per]
                    plan = part.process(chunk, (), 1e9)
                    prefix = store_prefix(part.partition)
                    changes = {prefix + k: v for k, v in plan.changes.items()}
                    changes[prefix + LOCAL] = part.local_value(0)
                    store.write(changes)
                    for key, value in plan.df_partials:
                        table.apply(key, value)
                    n += len(chunk)
                batches.append((n, time.perf_counter() - t, gc_s[0] - gc0))
                bar.update(n)
        finally:
            gc.callbacks.remove(on_gc)
            bar.close()
        encodes = []
        for part in parts:
            for state in part.cache.values():
                t = time.perf_counter()
                state.encode()
                encodes.append((len(state.counts), time.perf_counter() - t))
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tenth = max(1, len(batches) // 10)
    first, last = batches[:tenth], batches[-tenth:]

    def us(rows: list[tuple[int, float, float]], i: int) -> float:
        return sum(r[i] for r in rows) / sum(r[0] for r in rows) * 1e6

    def by_m(rows: list[tuple[int, float]]) -> dict[str, float]:
        out = {}
        for lo, hi in M_BINS:
            sel = [dt for m, dt in rows if lo <= m <= hi]
            if sel:
                out[f"{lo}-{hi}"] = statistics.median(sel) * 1e6
        return out

    return {"users": args.users, "items": args.items, "events": sum(r[0] for r in batches),
            "partitions": args.partitions, **shape, "core_batches": len(batches),
            "core_us_per_event_first_10pct": us(first, 1),
            "core_us_per_event_last_10pct": us(last, 1),
            "core_gc_us_per_event_first_10pct": us(first, 2),
            "core_gc_us_per_event_last_10pct": us(last, 2),
            "core_example_us_by_m": by_m(steps["example"]),
            "core_update_us_by_m": by_m(steps["update"]),
            "core_encode_us_by_m": by_m(encodes)}


def by_m_text(figures: dict[str, float]) -> str:
    return ", ".join(f"M {m}: {us:.0f}" for m, us in figures.items())


CORE_ROWS = [
    ("users / items / events", lambda r: f"{r['users']:,} / {r['items']:,} / {r['events']:,}"),
    ("µs per event, first 10 % / last 10 % of batches",
     lambda r: f"{r['core_us_per_event_first_10pct']:.0f} / "
     f"{r['core_us_per_event_last_10pct']:.0f}"),
    ("of which cyclic GC", lambda r: f"{r['core_gc_us_per_event_first_10pct']:.1f} / "
     f"{r['core_gc_us_per_event_last_10pct']:.1f}"),
    ("median µs per training example", lambda r: by_m_text(r["core_example_us_by_m"])),
    ("median µs per mekb-update", lambda r: by_m_text(r["core_update_us_by_m"])),
    ("median µs per state encoding", lambda r: by_m_text(r["core_encode_us_by_m"])),
]

ROWS = [
    ("users / items / events", lambda r: f"{r['users']:,} / {r['items']:,} / {r['events']:,}"),
    ("users with state", lambda r: f"{r['users_with_state']:,}"),
    ("events per user p50 / p99 / max", lambda r: f"{r['events_per_user_p50']:.0f} / "
     f"{r['events_per_user_p99']:.0f} / {r['events_per_user_max']:,}"),
    ("worker events/s (all)", lambda r: f"{r['rate_events_s']:,.0f}"),
    ("worker events/s first 10 % / last 10 %",
     lambda r: f"{r['rate_first_10pct']:,.0f} / {r['rate_last_10pct']:,.0f}"),
    ("CPU µs per event worker / broker",
     lambda r: f"{r['worker_cpu_us_per_event']:.0f} / {r['broker_cpu_us_per_event']:.0f}"),
    ("worker peak RSS", lambda r: f"{r['worker_peak_rss_mib']:,.0f} MiB"),
    ("broker (in-memory Tansu) peak RSS", lambda r: f"{r['broker_peak_rss_mib']:,.0f} MiB"),
    ("RocksDB on disk / per user",
     lambda r: f"{r['rocksdb_mib']:,.1f} MiB / {r['rocksdb_bytes_per_user']:,.0f} B"),
    ("restore of one partition from its changelog", lambda r: f"{r['restore_partition_s']:.2f}"
     f" s ({r['restore_changelog_records']:,} records; {r['restore_dropped_keys']:,} keys "
     f"dropped; {r['restore_clean_partition_s']:.2f} s when nothing was lost)"),
    ("restart wall clean / one partition lost",
     lambda r: f"{r['restart_wall_clean_s']:.1f} s / {r['restart_wall_lost_p0_s']:.1f} s"),
    ("item table (tracemalloc)", lambda r: f"{r['item_table_mib']:,.1f} MiB, "
     f"{r['bytes_per_item']:,.0f} B/item, {r['entities_per_item']:.1f} entities/item"),
    ("df table", lambda r: f"{r['df_entities']:,} entities, {r['df_partials']:,} partials, "
     f"{r['df_table_mib']:,.1f} MiB, {r['bytes_per_df_partial']:.0f} B/partial"),
    ("topic bytes per input event", lambda r: ", ".join(
        f"{t} {r['bytes_per_event_' + t.replace('-', '_')]:,.0f}" for t in OUTPUT_TOPICS)),
    ("serving replica catch-up (start -> ready)", lambda r: f"{r['replica_catch_up_s']:.1f} s"
     f" (restart of a caught-up replica {r['replica_restart_s']:.1f} s)"),
    ("serving replica disk", lambda r: f"{r['replica_disk_mib']:,.1f} MiB"),
    ("cache-miss embedding p50 / p99", lambda r: f"{r['miss_p50_ms']:.1f} / "
     f"{r['miss_p99_ms']:.1f} ms ({r['misses_measured']} misses, model {r['model']})"),
    ("trainer examples/s (EntityGraph) first / steady pass",
     lambda r: f"{r.get('trainer_first_pass_examples_s', math.nan):,.0f} / "
     f"{r.get('trainer_steady_examples_s', math.nan):,.0f} ({r['trainer_examples_fed']:,} "
     "examples)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=4_000,
                        help="people the alias table names (kb entities)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--misses", type=int, default=500)
    parser.add_argument("--trainer-examples", type=int, default=1_000)
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--worker-only", action="store_true",
                        help="stop after 1. (worker throughput): an A/B of the worker")
    parser.add_argument("--core", action="store_true",
                        help="only the partition core, in process (see `core`)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--workdir", help="keep the run's files here (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    result = core(args) if args.core else run(args)
    result["wall_s"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    rows = CORE_ROWS if args.core else ROWS[:8] if args.worker_only else ROWS
    width = max(len(label) for label, _ in rows)
    for label, fmt in rows:
        print(f"{label:<{width}}  {fmt(result)}")
    print(f"{'wall':<{width}}  {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
