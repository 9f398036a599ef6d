"""Stream worker throughput: synthetic interactions through the real broker and a real
`mekb worker` process (RocksDB state, changelog, outputs, df partials, offset commits).

    nice -n 10 python bench/bench_streams.py [--events 200000] [--repeat 3]
        [--runtimes aiokafka,faust] [--faust]

Per run, on fresh topics of one broker (the embedded Tansu unless --bootstrap):
1. the items are linked by a first worker process, which is then stopped;
2. N interactions are produced (5 % duplicates, 0.5 % malformed, 10 % negative);
3. baseline: a raw aiokafka consumer (no group, no processing) reads the same N
   records from the same broker;
4. a fresh worker process (same RocksDB, items replicated from item-entities at start)
   consumes them; end-to-end rate = events handled / time, taken from its /metrics
   (counters move only after a batch is durable and its offsets are committed), from
   the first completed batch to the last; peak RSS = the worker's VmHWM; CPU share =
   CPU seconds of the worker (and of the embedded broker) over the same window — near
   100 % means the worker is CPU-bound, well below means it waits on the broker.
   The end is polled every 0.25 s: a /metrics scrape renders every series and costs
   the worker CPU (Prometheus scrapes every 15 s), so polling it at 10-50 Hz
   would slow what is measured; the rate is understated by at most 0.25 s.
--runtimes measures the default aiokafka worker and/or `mekb worker --runtime faust`
(the same agents as faust-streaming agents, streams/faust_app.py), each run on topics
of its own, one after the other, with its own baseline; the summary gives the Faust
runtime's median over the aiokafka worker's.
With --faust the run also measures a faust-streaming agent that only counts events
from `stream.take()` (no processing, no state): the ceiling a Faust runtime would have.
Medians of --repeat runs; ratios are against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mekb.broker import EmbeddedBroker, free_port  # noqa: E402
from mekb.settings import Settings  # noqa: E402
from mekb.topics import create_topics  # noqa: E402
from streams.config import StreamConfig  # noqa: E402
from streams.synthetic import EventLog, alias_rows, generate  # noqa: E402

TARGET_RATE = 20_000.0
TARGET_RATIO = 0.25
RUNTIMES = ("aiokafka", "faust")
INPUT_OUTCOMES = ("applied", "duplicate", "ignored", "parked", "dead_letter")


async def _produce(settings: Settings, topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    from mekb.kafka_config import aiokafka_config

    producer = AIOKafkaProducer(**aiokafka_config(settings), linger_ms=5,
                                max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    try:
        futures = [await producer.send(settings.topic(topic), v, key=k) for k, v in pairs]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _raw_consume(settings: Settings, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    from mekb.kafka_config import aiokafka_config
    from streams.kafka_io import FETCH

    consumer = AIOKafkaConsumer(settings.topic("interactions"), **aiokafka_config(settings),
                                group_id=None, auto_offset_reset="earliest", **FETCH)
    await consumer.start()
    try:
        got, started = 0, time.perf_counter()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            got += sum(len(recs) for recs in batch.values())
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def peak_rss_mib(pid: int | None) -> float:
    """Peak resident memory of a running process (Linux /proc, VmHWM)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines() if pid else []
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WorkerProc:
    def __init__(self, settings: Settings, alias: Path, log: Path,
                 profile: Path | None = None, runtime: str = "aiokafka",
                 log_level: str = "WARNING") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
        self.port = free_port()
        env.update({
            "MEKB_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
            "MEKB_BROKER_FLAVOR": settings.flavor, "MEKB_TOPIC_PREFIX": settings.topic_prefix,
            "MEKB_PARTITIONS": str(settings.partitions), "MEKB_DATA_DIR": str(settings.data_dir),
            "MEKB_ALIAS_TABLE": str(alias), "MEKB_WORKER_ID": "bench",
            "MEKB_WORKER_PORT": str(self.port), "MEKB_LOG_LEVEL": log_level,
            "MEKB_TARGET_DOMAINS": settings.target_domains,
            "MEKB_WORKER_BATCH_MAX": str(settings.worker_batch_max),
        })
        if settings.example_entities is not None:
            env["MEKB_EXAMPLE_ENTITIES"] = str(settings.example_entities)
        self.log = log
        prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
        self.proc = subprocess.Popen([sys.executable, *prof, "-m", "mekb.cli.main", "worker",
                                      "--runtime", runtime], env=env,
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def handled(self) -> float:
        m = self.metrics()
        return sum(m.get(f'mekb_streams_events_total{{agent="mekb",outcome="{o}"}}', 0.0)
                   for o in INPUT_OUTCOMES)

    def wait(self, pred: Any, what: str, timeout_s: float = 120.0, every: float = 0.1) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited: {self.log.read_text()[-3000:]}")
            if pred():
                return time.perf_counter()
            time.sleep(every)
        raise SystemExit(f"timed out waiting for {what}: {self.log.read_text()[-3000:]}")

    def peak_rss_mib(self) -> float:
        return peak_rss_mib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _faust_child(bootstrap: str, topic: str, partitions: int, n: int, take: int) -> None:
    """Runs in its own process: a Faust agent that only counts what take() yields."""
    import faust

    from mekb.kafka_config import faust_config

    settings = Settings(bootstrap_servers=bootstrap, broker_flavor="tansu",
                        partitions=partitions)
    app = faust.App(f"bench-faust-{uuid.uuid4().hex[:8]}", **faust_config(settings),
                    web_enabled=False, datadir=tempfile.mkdtemp(prefix="faust-"),
                    consumer_auto_offset_reset="earliest", topic_disable_leader=True)
    source = app.topic(topic, key_serializer="raw", value_serializer="raw",
                       partitions=partitions)
    state: dict[str, Any] = {"n": 0, "t0": None}

    @app.agent(source)
    async def count(stream: Any) -> None:
        async for batch in stream.take(take, within=0.2):
            if state["t0"] is None:  # from the first batch, like the worker's figure
                state["t0"], first = time.perf_counter(), len(batch)
                state["first"] = first
            state["n"] += len(batch)
            if state["n"] >= n:
                rate = (n - state["first"]) / (time.perf_counter() - state["t0"])
                print(json.dumps({"faust_rate": rate}), flush=True)
                os._exit(0)  # Faust's shutdown takes seconds and measures nothing

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def _faust_rate(settings: Settings, n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--faust-child", str(settings.bootstrap_servers),
         settings.topic("interactions"), str(settings.partitions), str(n)],
        capture_output=True, text=True, timeout=600, check=False)
    # Faust's worker redirects stdout into its logger (stderr): search both.
    found = re.search(r'\{"faust_rate": [^}]*\}', out.stdout + out.stderr)
    if found:
        return float(json.loads(found.group(0))["faust_rate"])
    raise SystemExit(f"faust child failed (rc {out.returncode}): "
                     f"{out.stdout[-2000:]} {out.stderr[-3000:]}")


def one_run(base: Settings, alias: Path, log: EventLog, work: Path, faust: bool,
            profile: Path | None = None, broker_pid: int | None = None,
            runtime: str = "aiokafka") -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}-"
    settings = Settings(**{**base.model_dump(), "topic_prefix": prefix,
                           "data_dir": work / prefix})
    create_topics(settings)
    items = [(str(x["item_id"]).encode(), json.dumps(x).encode()) for x in log.items]
    asyncio.run(_produce(settings, "items", items))
    linker_run = WorkerProc(settings, alias, work / f"{prefix}link.log")
    linker_run.wait(lambda: linker_run.metrics().get("mekb_streams_items") == len(items),
                    "items linked")
    linker_run.stop()

    pairs = list(zip(log.keys, log.interactions, strict=True))
    started = time.perf_counter()
    asyncio.run(_produce(settings, "interactions", pairs))
    produce_rate = len(pairs) / (time.perf_counter() - started)
    raw_rate = asyncio.run(_raw_consume(settings, len(pairs)))

    worker = WorkerProc(settings, alias, work / f"{prefix}worker.log", profile, runtime)
    try:
        first = 0.0

        def started_() -> bool:
            nonlocal first
            first = worker.handled()
            return first > 0

        t0 = worker.wait(started_, "first batch", every=0.02)
        cpu0 = cpu_seconds(worker.proc.pid), cpu_seconds(broker_pid)
        t1 = worker.wait(lambda: worker.handled() >= len(pairs), "all events", timeout_s=600,
                         every=0.25)
        cpu1 = cpu_seconds(worker.proc.pid), cpu_seconds(broker_pid)
        rss = worker.peak_rss_mib()
    finally:
        worker.stop()
    if first >= len(pairs):
        raise SystemExit(f"all {len(pairs):,} records were handled in the worker's first batch, "
                         "which the rate is timed from: raise --events or lower --batch-max")
    rate = (len(pairs) - first) / (t1 - t0)
    row = {"events": float(len(pairs)), "produce_rate": produce_rate, "raw_rate": raw_rate,
           "rate": rate, "ratio": rate / raw_rate, "peak_rss_mib": rss,
           "worker_cpu": (cpu1[0] - cpu0[0]) / (t1 - t0),
           "broker_cpu": (cpu1[1] - cpu0[1]) / (t1 - t0)}
    if faust:
        row["faust_rate"] = _faust_rate(settings, len(pairs))
        row["faust_ratio"] = row["faust_rate"] / raw_rate
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    return row


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--faust-child":
        bootstrap, topic, parts, n = sys.argv[2:6]
        _faust_child(bootstrap, topic, int(parts), int(n), take=10_000)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bootstrap", help="an existing broker (default: start Tansu)")
    parser.add_argument("--flavor", default="tansu", choices=("tansu", "kafka"))
    parser.add_argument("--target-domains", default="action",
                        help="MEKB_TARGET_DOMAINS of the worker ('none': no training examples)")
    parser.add_argument("--example-entities", type=int, default=None,
                        help="MEKB_EXAMPLE_ENTITIES of the worker (default: the worker's, "
                        "MEKB_TRAINER_MAX_TOKENS // 2 = 64; 0: the whole MeKB)")
    parser.add_argument("--batch-max", type=int, default=Settings().worker_batch_max,
                        help="MEKB_WORKER_BATCH_MAX of the worker (default: the worker's)")
    parser.add_argument("--runtimes", default="aiokafka",
                        help="comma-separated worker runtimes to measure: aiokafka, faust")
    parser.add_argument("--faust", action="store_true",
                        help="also measure a no-op faust-streaming take() agent")
    parser.add_argument("--profile", type=Path,
                        help="run the measured worker under cProfile, stats to this file")
    args = parser.parse_args()
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not runtimes or set(runtimes) - set(RUNTIMES):
        parser.error(f"--runtimes: a comma-separated list of {', '.join(RUNTIMES)}")

    from linker.alias_table import AliasTable

    work = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    AliasTable.build(work / "alias", alias_rows(200)).close()
    log = generate(n_users=args.users, n_items=args.items, n_events=args.events,
                   n_entities=200, seed=5, dup_rate=0.05, malformed_rate=0.005)
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=work / "tansu.log").start()
        bootstrap = broker.bootstrap_servers
    base = Settings(bootstrap_servers=bootstrap, broker_flavor=args.flavor,
                    partitions=args.partitions, data_dir=work, target_domains=args.target_domains,
                    worker_batch_max=args.batch_max, example_entities=args.example_entities)
    rows: dict[str, list[dict[str, float]]] = {r: [] for r in runtimes}
    try:
        for i in range(args.repeat):
            for runtime in runtimes:
                row = one_run(base, work / "alias", log, work,
                              args.faust and runtime == runtimes[0], args.profile,
                              broker.pid if broker is not None else None, runtime)
                rows[runtime].append(row)
                print(f"run {i + 1} ({runtime}): "
                      + "  ".join(f"{k} {v:,.2f}" for k, v in row.items()), flush=True)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    meds = {rt: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for rt, rs in rows.items()}
    med = meds[runtimes[0]]
    limit = StreamConfig.from_settings(base).example_entities
    examples = ("no training examples" if args.target_domains == "none" else
                f"training examples of {limit or 'all'} entities at most (MEKB_EXAMPLE_ENTITIES)")
    print(f"\nmedian of {args.repeat} runs, {int(med['events']):,} interactions, "
          f"{args.users:,} users, {args.partitions} partitions, {examples}:")
    print(f"  runtime               {runtimes[0]}")
    print(f"  worker end-to-end     {med['rate']:>10,.0f} events/s   "
          f"(target >= {TARGET_RATE:,.0f})")
    print(f"  raw aiokafka consume  {med['raw_rate']:>10,.0f} events/s")
    print(f"  ratio                 {med['ratio']:>10.1%}          (target >= {TARGET_RATIO:.0%})")
    for runtime in runtimes[1:]:
        other = meds[runtime]
        print(f"  {runtime} worker  {other['rate']:>14,.0f} events/s   "
              f"({other['ratio']:.1%} of its run's raw consume; peak RSS "
              f"{other['peak_rss_mib']:,.0f} MiB)")
        print(f"  {runtime} / {runtimes[0]:<12}{other['rate'] / med['rate']:>8.2f}x")
    if "faust_rate" in med:
        print(f"  faust take() no-op    {med['faust_rate']:>10,.0f} events/s   "
              f"({med['faust_ratio']:.1%} of raw)")
    print(f"  worker peak RSS       {med['peak_rss_mib']:>10,.0f} MiB")
    print(f"  CPU share (measured)  worker {med['worker_cpu']:.0%}, broker "
          f"{med['broker_cpu']:.0%} of one core")
    print(f"  producer (aiokafka)   {med['produce_rate']:>10,.0f} events/s")


if __name__ == "__main__":
    main()
