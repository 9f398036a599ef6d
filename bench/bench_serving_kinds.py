"""Serving of model kinds (issue 16): EntityGraph's refresh, freshness and a hot swap
between kinds, each with its baseline in the same run.

    OMP_NUM_THREADS=1 nice -n 5 python bench/bench_serving_kinds.py refresh [--repeat 3]
    OMP_NUM_THREADS=1 python bench/bench_serving_kinds.py fresh [--rates 1000,5000]
    OMP_NUM_THREADS=1 nice -n 5 python bench/bench_serving_kinds.py swap [--hit-rate 500]

refresh  in-process service (replica in RocksDB, refresher, batcher, real ONNX Runtime;
         no HTTP, no broker): --users updates applied in the consumer's fetch-sized
         chunks (serving/updates.py FETCH_MAX_RECORDS) until every user is precomputed,
         users/s (wall) and users per CPU-second of this process; EntityGraph (K=256,
         20 000 entities, 5-60 per user) vs EmbedMe (MiniLM, 64 tokens, 100 users).
fresh    the real path: the embedded broker, a `mekb serve` process with EntityGraph
         active, --users users on mekb-updates; then updates produced by this process
         at each of --rates/s for --duration s, each with `ts` = `updated_at` = its send time.
         Freshness = precomputed embedding in the cache - send time (the server's
         mekb_serving_precompute_lag_seconds, same clock), plus probes of every
         --probe-every-th update from the client (poll /mekb until the version is
         applied, then GET the embedding: lag = answer - send time). Deferred users from
         mekb_serving_refresh_users_total; the cores used by the server, the broker
         and this producer. Baseline: the first of --rates (1 000/s).
swap     the real path again: EmbedMe and EntityGraph versions (same items) published,
         EmbedMe active, every user's embedding cached; then --hit-rate requests/s of
         cache hits on 16 connections for --duration s while the admin API activates
         EntityGraph, then EmbedMe again. Counted: errors (non-200 or broken
         connections), responses whose embedding differs from their named version's
         own embedding of that user (computed here straight from each bundle with ONNX
         Runtime: a mixed response), latency p50/p99 of hits and of all requests.
         Baseline: the same load with no swap, before the swaps.

The machine is shared (2 cores): each command prints one JSON line per repeat and the
medians; docs/benchmarks.md (issue 16) has the figures and the load they ran under.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_serving import (  # noqa: E402
    ADMIN,
    V1,
    Conn,
    Server,
    build_registry,
    hist_quantile,
    ms,
    pct,
    produce,
    vocabulary,
)

from mekb.broker import EmbeddedBroker  # noqa: E402
from mekb.registry import Registry  # noqa: E402
from mekb.settings import Settings  # noqa: E402
from mekb.topics import create_topics  # noqa: E402

N_ENTITIES = 20_000
EG_VERSION = "20261124T120000Z-bb0e60"
LAG = "mekb_serving_precompute_lag_seconds"
TARGETS = {"refresh_users_per_s": 10_000, "fresh_p99_s": 0.5, "fresh_rate": 5_000,
           "hit_p99_ms": 5.0, "hit_rate": 500, "swap_errors": 0}


# --- set-up ---------------------------------------------------------------------------
def entitygraph_version(reg: Registry, item_ids: list[str], domains: list[str]) -> str:
    """A random EntityGraph (MiniLM-sized entity vectors, K=256) published as a version."""
    import torch

    from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
    from trainer.online.kinds import EntityGraphOnline

    if EG_VERSION not in {v.version for v in reg.list()}:
        torch.manual_seed(0)
        model = EntityGraph(EntityGraphConfig(dim=256), 384).eval()
        vecs = np.random.default_rng(0).standard_normal((N_ENTITIES, 384)).astype(np.float32)
        model.add_entities([f"kb:e{n}" for n in range(N_ENTITIES)], vecs / 20.0)
        model.add_items(item_ids, domains)
        bundle = EntityGraphOnline(Settings()).write_full_bundle(
            model, reg.root.parent / "eg-bundle", version=EG_VERSION, parent=None, gate={},
            metrics={}, offsets={})
        reg.publish(bundle, move=True)
    return EG_VERSION


def registry(work: Path) -> tuple[Registry, str]:
    """EmbedMe V1 (and V2) from bench_serving, EntityGraph with the same items."""
    reg = Registry(build_registry(work / "models-64", 64))
    items = json.loads((reg.get(V1).path / "items.json").read_text())
    return reg, entitygraph_version(reg, items["item_ids"], items["domains"])


def mekb(rng: random.Random) -> list[dict[str, Any]]:
    ents = rng.sample(range(N_ENTITIES), rng.randint(5, 60))
    return [{"id": f"kb:e{e}", "title": f"entity {e}", "k": 1.0, "score": 1.0 / len(ents)}
            for e in ents]


def value(user: str, version: int, entities: list[dict[str, Any]], at: float) -> bytes:
    return orjson.dumps({"v": 1, "user_id": user, "version": version, "ts": at,
                         "updated_at": at, "entities": entities})


class Templates:
    """Pre-encoded MeKBs: a record costs one bytes join at send time, so the producer
    (sharing the 2 cores with the broker and the server) can reach 5 000/s."""

    def __init__(self, users: list[str], rng: random.Random) -> None:
        self.heads = {u: b'{"v":1,"user_id":' + orjson.dumps(u) + b',"version":' for u in users}
        self.tails = {u: b',"entities":' + orjson.dumps(mekb(rng)) + b"}" for u in users}

    def __call__(self, user: str, version: int, at: float) -> bytes:
        stamp = repr(at).encode()
        return b"".join((self.heads[user], str(version).encode(), b',"ts":', stamp,
                         b',"updated_at":', stamp, self.tails[user]))


def scrape(server: Server) -> dict[str, float]:
    return server.metrics()


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: dict[str, int | None]) -> dict[str, float]:
    return {name: cpu_s(pid) for name, pid in pids.items()}


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def share_within(before: dict[str, float], after: dict[str, float], name: str,
                 le: str) -> tuple[float, float]:
    """(share of a histogram's new observations <= le, their count)."""
    count = delta(before, after, f"{name}_count")
    within = delta(before, after, f'{name}_bucket{{le="{le}"}}')
    return (within / count if count else float("nan")), count


def settings_for(broker: EmbeddedBroker, work: Path, tag: str) -> Settings:
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
                        topic_prefix=f"bk{tag}{int(time.time())}-", partitions=2,
                        data_dir=work / f"data-{tag}-{int(time.time())}")
    create_topics(settings)
    return settings


async def wait_idle(server: Server, timeout_s: float = 120.0) -> None:
    """Until the replica has read everything and the refresher has nothing pending
    (the catch-up is precomputed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = server.metrics()
        if m.get("mekb_serving_refresh_pending_users", 1.0) == 0.0 and \
                m.get("mekb_serving_replica_lag_records", 1.0) == 0.0:
            return
        await asyncio.sleep(0.5)


# --- refresh (in-process) ---------------------------------------------------------------
async def refresh_rate(model: Any, values: list[tuple[str, bytes]],
                       tmp: Path) -> tuple[float, float]:
    """(users/s, users per CPU-second): `values` applied in the consumer's fetch-sized
    chunks, until every user is precomputed."""
    from prometheus_client import CollectorRegistry

    from serving.metrics import ServingMetrics
    from serving.replica import Incoming, Replica
    from serving.service import EmbeddingService
    from serving.updates import FETCH_MAX_RECORDS

    # no deferral: EmbedMe's refresher would hand users older than 2 s to on-demand
    service = EmbeddingService(Replica(tmp), ServingMetrics(CollectorRegistry()),
                               refresh_max_lag_s=1e9)
    service.replica_caught_up = True
    await service.start()
    try:
        service.activate(model)
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, len(values), FETCH_MAX_RECORDS):
            chunk = values[lo:lo + FETCH_MAX_RECORDS]
            service.on_applied(service.replica.apply(
                [Incoming(0, lo + n, u.encode(), v) for n, (u, v) in enumerate(chunk)]))
            await asyncio.sleep(0)  # the consumer awaits its next fetch here
        while len(service.cache) < len(values):
            await asyncio.sleep(0.002)
        return (len(values) / (time.perf_counter() - t0),
                len(values) / (time.process_time() - c0))
    finally:
        await service.stop()
        service.replica.close()


def refresh_main(args: argparse.Namespace, work: Path) -> None:
    from serving.model import load_model

    reg, eg = registry(work)
    words = vocabulary(reg.root)
    em_model = load_model(reg, V1, device="cpu")
    eg_model = load_model(reg, eg, device="cpu")
    rng = random.Random(1)
    runs = []
    for r in range(args.repeat):
        em_vals = [(f"u{n}", value(f"u{n}", 1, [
            {"id": f"kb:{t}", "title": t, "k": 1.0, "score": 1.0 / (k + 1)}
            for k, t in enumerate(" ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
                                  for _ in range(rng.randint(5, 30)))], time.time()))
            for n in range(100)]
        eg_vals = [(f"u{n}", value(f"u{n}", 1, mekb(rng), time.time()))
                   for n in range(args.users)]
        # a new replica each time (an old one would hold these versions already)
        with tempfile.TemporaryDirectory(dir=work) as a, tempfile.TemporaryDirectory(dir=work) as b:
            em = asyncio.run(refresh_rate(em_model, em_vals, Path(a)))
            eg_rate = asyncio.run(refresh_rate(eg_model, eg_vals, Path(b)))
        runs.append({"embedme_users_per_s": round(em[0], 1),
                     "embedme_users_per_cpu_s": round(em[1], 1),
                     "entitygraph_users_per_s": round(eg_rate[0]),
                     "entitygraph_users_per_cpu_s": round(eg_rate[1]),
                     "ratio": round(eg_rate[0] / em[0], 1)})
        print(json.dumps({"repeat": r + 1, **runs[-1]}), flush=True)
    print(json.dumps({"median": {k: statistics.median(x[k] for x in runs) for k in runs[0]},
                      "users": args.users, "targets": TARGETS}), flush=True)


# --- fresh (real broker, real `mekb serve`) -----------------------------------------------
async def updates_at(settings: Settings, port: int, tpl: Templates, users: list[str],
                     versions: dict[str, int], rate: float, duration: float,
                     probe_every: int) -> dict[str, Any]:
    """Produce updates at `rate`/s for `duration` s; probe every `probe_every`-th."""
    from aiokafka import AIOKafkaProducer

    from mekb.kafka_config import aiokafka_config

    lags: list[float] = []
    precomputed = 0
    probes: list[asyncio.Task[None]] = []

    async def probe(user: str, version: int, sent: float) -> None:
        nonlocal precomputed
        conn = Conn(port)
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                _, body = await conn.request("GET", f"/v1/users/{user}/mekb")
                if orjson.loads(body)["mekb_version"] >= version:
                    _, body = await conn.request("GET", f"/v1/users/{user}/embedding")
                    got = orjson.loads(body)
                    if got["mekb_version"] >= version:
                        lags.append(time.time() - sent)
                        precomputed += bool(got["cached"])
                    return
                await asyncio.sleep(0.01)
        finally:
            conn.close()

    producer = AIOKafkaProducer(**aiokafka_config(settings), linger_ms=5,
                                max_batch_size=1 << 20)
    await producer.start()
    n = int(rate * duration)
    topic = settings.topic("mekb-updates")
    start = time.perf_counter()
    try:
        for k in range(n):
            if k % max(1, int(rate / 100)) == 0:  # paced in 10 ms slices
                delay = start + k / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            user = users[k % len(users)]
            versions[user] += 1
            sent = time.time()
            await producer.send(topic, tpl(user, versions[user], sent), key=user.encode())
            if probe_every and k % probe_every == 0:
                probes.append(asyncio.ensure_future(probe(user, versions[user], sent)))
        await producer.flush()
        achieved = n / (time.perf_counter() - start)
    finally:
        await producer.stop()
    await asyncio.gather(*probes)
    return {"achieved_rate": achieved, "lags": lags, "probes": len(probes),
            "probes_precomputed": precomputed, "updates": n}


async def fresh_phase(settings: Settings, server: Server, tpl: Templates, users: list[str],
                      versions: dict[str, int], rate: float, args: argparse.Namespace,
                      pids: dict[str, int | None]) -> dict[str, Any]:
    await wait_idle(server)
    before = scrape(server)
    cpu0, wall0 = cpu_of(pids), time.monotonic()
    got = await updates_at(settings, server.port, tpl, users, versions, rate, args.duration,
                           args.probe_every)
    cpu1, wall = cpu_of(pids), time.monotonic() - wall0
    load = os.getloadavg()[0]
    await asyncio.sleep(3.0)
    await wait_idle(server)
    after = scrape(server)
    share, count = share_within(before, after, LAG, "0.5")
    applied_share, _ = share_within(before, after, "mekb_serving_processing_lag_seconds",
                                    "0.5")
    refresh = {o: delta(before, after, f'mekb_serving_refresh_users_total{{outcome="{o}"}}')
               for o in ("refreshed", "deferred", "coalesced", "skipped")}
    return {
        "rate": rate, "achieved_rate": round(got["achieved_rate"]), "updates": got["updates"],
        "precomputed": count, "share_precomputed_le_0.5s": round(share, 4),
        "precompute_p50_s_le": hist_quantile(before, after, LAG, 0.5),
        "precompute_p99_s_le": hist_quantile(before, after, LAG, 0.99),
        "applied_share_le_0.5s": round(applied_share, 4),
        "probes": got["probes"], "probes_answered": len(got["lags"]),
        "probes_precomputed": got["probes_precomputed"],
        "probe_p50_s": round(pct(got["lags"], 0.5), 3),
        "probe_p99_s": round(pct(got["lags"], 0.99), 3),
        "refresh": refresh,
        "capacity_users_per_s": round(after.get(
            "mekb_serving_refresher_capacity_users_per_second", 0.0)),
        # cores each process used while producing (of 2), and the machine's load
        "cores": {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in pids},
        "load_avg_1m": round(load, 1),
    }


def fresh_main(args: argparse.Namespace, work: Path) -> None:
    reg, eg = registry(work)
    reg.activate(eg)
    users = [f"user{n}" for n in range(args.users)]
    tpl = Templates(users, random.Random(2))
    runs = []
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        settings = settings_for(broker, work, "f")
        asyncio.run(produce(settings, [(u, tpl(u, 1, time.time())) for u in users]))
        versions = dict.fromkeys(users, 1)
        server = Server(settings, reg.root, work / "serve-fresh.log")
        server.start()
        assert server.proc is not None
        pids = {"serve": server.proc.pid, "broker": broker.pid, "producer": os.getpid()}
        try:
            for r in range(args.repeat):
                run = {}
                for rate in args.rates:
                    label = str(int(rate))
                    run[label] = asyncio.run(fresh_phase(
                        settings, server, tpl, users, versions, rate, args, pids))
                    print(json.dumps({"repeat": r + 1, label: run[label]}), flush=True)
                runs.append(run)
        finally:
            server.stop()
    keys = ("achieved_rate", "share_precomputed_le_0.5s", "precompute_p99_s_le",
            "probe_p50_s", "probe_p99_s", "applied_share_le_0.5s")
    print(json.dumps({"median": {label: {k: statistics.median(r[label][k] for r in runs)
                                         for k in keys} for label in runs[0]},
                      "deferred": {label: sum(r[label]["refresh"]["deferred"] for r in runs)
                                   for label in runs[0]},
                      "targets": TARGETS}), flush=True)


# --- swap (real broker, real `mekb serve`, admin API) ---------------------------------------
class Reference:
    """Each version's embedding of each user straight from its bundle (no serving code
    for EntityGraph: the trainer's ONNX tower; EmbedMe: its tokenizer + session)."""

    def __init__(self, reg: Registry, mekbs: dict[str, list[dict[str, Any]]]) -> None:
        self.reg, self.mekbs = reg, mekbs
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def embed(self, version: str, users: list[str]) -> None:
        from mekb.scoring import sequence_text
        from serving.encoder import OnnxEncoder
        from trainer.entitygraph.export import OnnxUserTower

        mv = self.reg.get(version)
        if mv.model_kind == "entitygraph":
            tower = OnnxUserTower(mv.path)
            out = tower.encode([[(e["id"], float(e["score"])) for e in self.mekbs[u]]
                                for u in users])
        else:
            enc = OnnxEncoder(mv.path, mv.manifest["max_tokens"], device="cpu")
            texts = [sequence_text([e["title"] for e in sorted(
                self.mekbs[u], key=lambda e: -float(e["score"]))], mv.manifest["max_tokens"])
                for u in users]
            out = np.concatenate([enc.encode(texts[n:n + 32])[0]
                                  for n in range(0, len(texts), 32)])
        for u, row in zip(users, out, strict=True):
            self.cache[(version, u)] = row


async def paced(port: int, users: list[str], rate: float, duration: float,
                log: list[tuple[float, float, int, bool, str, str, bytes]]) -> int:
    """GET embeddings at `rate`/s on 16 connections; every answer logged as (sent at,
    latency, status, cached, version, user, body). Returns transport errors."""
    rng = random.Random(7)
    start = time.perf_counter()
    counter = 0
    broken = 0

    async def worker() -> None:
        nonlocal counter, broken
        conn = Conn(port)
        try:
            while time.perf_counter() - start < duration:
                n = counter
                counter += 1
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                user = rng.choice(users)
                t0 = time.perf_counter()
                try:
                    status, body = await conn.request("GET", f"/v1/users/{user}/embedding")
                except (OSError, asyncio.IncompleteReadError):
                    broken += 1
                    conn.close()
                    conn = Conn(port)
                    continue
                elapsed = time.perf_counter() - t0
                cached = b'"cached":true' in body
                version = orjson.loads(body).get("model_version", "") if status == 200 else ""
                log.append((t0 - start, elapsed, status, cached, version, user, body))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(16)))
    return broken


async def swap_phase(port: int, users: list[str], eg: str, args: argparse.Namespace,
                     swap: bool) -> dict[str, Any]:
    log: list[tuple[float, float, int, bool, str, str, bytes]] = []
    codes: list[tuple[str, int, float, float]] = []

    async def switches() -> None:
        for at, version in ((0.25, eg), (0.65, V1)):
            await asyncio.sleep(max(0.0, at * args.duration - (time.perf_counter() - t0)))
            conn = Conn(port)  # one per call: an idle keep-alive connection is closed
            try:
                s = time.perf_counter()
                status, _ = await conn.request("POST", f"/v1/models/{version}/activate", ADMIN)
                codes.append((version, status, round(s - t0, 2),
                              round(time.perf_counter() - s, 2)))
            finally:
                conn.close()

    t0 = time.perf_counter()
    load = paced(port, users, args.hit_rate, args.duration, log)
    broken = (await asyncio.gather(load, switches()))[0] if swap else await load
    return {"log": log, "broken": broken, "codes": codes}


def check_swap(ref: Reference, phase: dict[str, Any]) -> dict[str, Any]:
    log = phase["log"]
    errors = phase["broken"] + sum(1 for e in log if e[2] != 200)
    need: dict[str, set[str]] = {}
    for _, _, status, _, version, user, _ in log:
        if status == 200:
            need.setdefault(version, set()).add(user)
    for version, us in need.items():
        missing = sorted(u for u in us if (version, u) not in ref.cache)
        if missing:
            ref.embed(version, missing)
    mixed = 0
    for _, _, status, _, version, user, body in log:
        if status != 200:
            continue
        got = np.asarray(orjson.loads(body)["embedding"], dtype=np.float32)
        want = ref.cache[(version, user)]
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            mixed += 1
    hits = [e[1] for e in log if e[2] == 200 and e[3]]
    every = [e[1] for e in log if e[2] == 200]
    wall = max((e[0] for e in log), default=1.0)
    # the slowest seconds show where the tail comes from (a switch, or the machine)
    per_s: dict[int, list[float]] = {}
    for e in log:
        per_s.setdefault(int(e[0]), []).append(e[1])
    return {"requests": len(log), "rate": round(len(log) / wall, 1), "errors": errors,
            "mixed": mixed, "checked": sum(1 for e in log if e[2] == 200),
            "hits": len(hits), "misses": len(every) - len(hits),
            "hit_p50_ms": ms(pct(hits, 0.5)), "hit_p99_ms": ms(pct(hits, 0.99)),
            "all_p99_ms": ms(pct(every, 0.99)), "all_max_ms": ms(max(every, default=0.0)),
            "versions": sorted({e[4] for e in log if e[2] == 200}),
            "p99_ms_per_s": [ms(pct(per_s[k], 0.99)) for k in sorted(per_s)],
            "activations": phase["codes"]}


def swap_main(args: argparse.Namespace, work: Path) -> None:
    reg, eg = registry(work)
    reg.activate(V1)
    users = [f"user{n}" for n in range(args.users)]
    rng = random.Random(4)
    mekbs = {u: mekb(rng) for u in users}
    ref = Reference(reg, mekbs)
    runs = []
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        settings = settings_for(broker, work, "s")
        asyncio.run(produce(settings, [(u, value(u, 1, mekbs[u], time.time()))
                                       for u in users]))
        server = Server(settings, reg.root, work / "serve-swap.log")
        server.start()
        try:
            for r in range(args.repeat):
                asyncio.run(warm(server.port, users))
                run = {}
                for label, swap in (("baseline", False), ("swap", True)):
                    phase = asyncio.run(swap_phase(server.port, users, eg, args, swap))
                    run[label] = check_swap(ref, phase)
                    print(json.dumps({"repeat": r + 1, label: run[label]}), flush=True)
                runs.append(run)
        finally:
            server.stop()
    keys = ("rate", "hit_p50_ms", "hit_p99_ms", "all_p99_ms", "misses")
    print(json.dumps({
        "median": {label: {k: statistics.median(r[label][k] for r in runs) for k in keys}
                   for label in ("baseline", "swap")},
        "errors_total": sum(r["swap"]["errors"] for r in runs),
        "mixed_total": sum(r["swap"]["mixed"] for r in runs),
        "checked_total": sum(r["swap"]["checked"] for r in runs), "targets": TARGETS,
    }), flush=True)


async def warm(port: int, users: list[str]) -> None:
    """Every user's embedding cached by the active version (misses computed now)."""
    conn = Conn(port)
    try:
        for user in users:
            await conn.request("GET", f"/v1/users/{user}/embedding")
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("refresh", "fresh", "swap"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--users", type=int, default=None,
                    help="refresh: 20 000; fresh: 20 000; swap: 500")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")],
                    default=[1000.0, 5000.0],
                    help="fresh: update rates/s, in this order (the first is the baseline)")
    ap.add_argument("--probe-every", type=int, default=500)
    ap.add_argument("--hit-rate", type=float, default=500.0, help="swap: requests/s")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the bundles here between runs (default: a temporary dir)")
    args = ap.parse_args()
    if args.users is None:
        args.users = 500 if args.mode == "swap" else 20_000
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-kinds-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        {"refresh": refresh_main, "fresh": fresh_main, "swap": swap_main}[args.mode](args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
