"""Embedding service under load: a real `mekb serve` process, real broker, real EmbedMe bundles.

    nice -n 10 python bench/bench_serving.py [--duration 10] [--repeat 3] [--max-tokens 64]

Set-up (once): the embedded Tansu broker, topics, two EmbedMe bundles exported with
trainer.export.write_bundle (MiniLM user tower, K=256) published in a registry, a
`mekb serve` process, and --users synthetic users (5-30 entity titles each)
produced on mekb-updates. Then, per repeat:

1. hits: every user's embedding is cached; --hit-concurrency clients paced at
   --hit-rate requests/s for --duration s (GET /v1/users/{u}/embedding);
2. misses: a fresh update for every user is produced first, so each request finds a
   newer MeKB version than the cache (responses with `cached: true` — users the
   refresher already precomputed — are excluded from the miss figures); run at each
   --miss-concurrency, unpaced (closed loop);
   baseline: raw ONNX Runtime `session.run` in this process on the same texts at the
   batch size the server really used (its mekb_serving_batch_size_sequences mean),
   with the tokenizer excluded; ratio = miss p50 / raw time of that batch;
3. freshness: updates produced at --update-rate/s for --duration s with `ts` = now;
   every 20th update is probed by polling its user's embedding until the new MeKB
   version is served: lag = first response with it - ts (on-demand included);
4. hot swap: the hit load runs while V2 is activated and then rolled back through the
   admin endpoint: errors and non-200 answers are counted.

Model kinds (issue 16: EntityGraph's refresh and freshness, a hot swap between kinds):
bench/bench_serving_kinds.py.

Client: a minimal keep-alive HTTP/1.1 client on asyncio streams (httpx would spend
more CPU than the server on these 2 cores). Medians over --repeat; the machine is
shared, so figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mekb.broker import EmbeddedBroker, free_port  # noqa: E402
from mekb.registry import Registry  # noqa: E402
from mekb.settings import Settings  # noqa: E402
from mekb.topics import create_topics  # noqa: E402

KEY, ADMIN = "bench-key", "bench-admin"
V1, V2 = "20261124T100000Z-bb0001", "20261124T110000Z-bb0002"
N_ITEMS = 2000
TARGETS = {"hit_p99_ms": 5.0, "hit_rate": 500.0, "miss_ratio": 1.3, "fresh_p99_s": 2.0}


# --- set-up ---------------------------------------------------------------------------
def build_registry(root: Path, max_tokens: int) -> Path:
    reg = Registry(root / "registry")
    if reg.active_version() == V1 and {v.version for v in reg.list()} == {V1, V2}:
        return reg.root  # reuse the export of an earlier run (--workdir)
    import torch

    from trainer.export import write_bundle
    from trainer.model import EmbedMe, EmbedMeConfig

    shutil.rmtree(reg.root, ignore_errors=True)
    items = [f"i{n}" for n in range(N_ITEMS)]
    domains = ["movies" if n % 2 else "books" for n in range(N_ITEMS)]
    for seed, version in ((1, V1), (2, V2)):
        torch.manual_seed(seed)
        model = EmbedMe(EmbedMeConfig(max_tokens=max_tokens), items, domains).eval()
        reg.publish(write_bundle(model, root / f"bundle-{seed}", version=version), move=True)
    reg.activate(V1)
    return reg.root


def vocabulary(registry_root: Path) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Registry(registry_root).get(V1).path / "tokenizer"))
    return sorted(w for w in tok.get_vocab() if w.isalpha() and len(w) >= 4)[:20000]


def user_value(user: str, version: int, rng: random.Random, words: list[str],
               ts: float | None = None) -> bytes:
    titles = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
              for _ in range(rng.randint(5, 30))]
    now = time.time()
    return json.dumps({
        "v": 1, "user_id": user, "version": version, "ts": ts or now, "updated_at": now,
        "n_users": 1000, "seen_items": [f"i{rng.randrange(N_ITEMS)}" for _ in range(10)],
        "entities": [{"id": f"kb:{t}", "title": t, "k": 1.0, "score": 1.0 / (n + 1)}
                     for n, t in enumerate(titles)],
    }).encode()


class Server:
    def __init__(self, settings: Settings, registry_root: Path, log: Path) -> None:
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
        self.env.update({
            "MEKB_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
            "MEKB_BROKER_FLAVOR": "tansu", "MEKB_TOPIC_PREFIX": settings.topic_prefix,
            "MEKB_PARTITIONS": str(settings.partitions), "MEKB_DATA_DIR": str(settings.data_dir),
            "MEKB_REGISTRY_DIR": str(registry_root), "MEKB_SERVING_PORT": str(self.port),
            "MEKB_SERVING_API_KEYS": KEY, "MEKB_SERVING_ADMIN_KEY": ADMIN,
            "MEKB_LOG_LEVEL": "WARNING",
        })
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "mekb.cli.main", "serve"],
                                         env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("server died:\n" + self.log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise SystemExit("server not ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


async def produce(settings: Settings, values: list[tuple[str, bytes]],
                  rate: float = 0.0) -> list[float]:
    """Send (user, value) pairs, paced at `rate`/s in 20 ms slices; returns send times."""
    from aiokafka import AIOKafkaProducer

    from mekb.kafka_config import aiokafka_config

    producer = AIOKafkaProducer(**aiokafka_config(settings), linger_ms=5,
                                max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    sent: list[float] = []
    try:
        start = time.perf_counter()
        futures = []
        for n, (user, value) in enumerate(values):
            if rate > 0 and n % max(1, int(rate / 50)) == 0:
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            futures.append(await producer.send(settings.topic("mekb-updates"), value,
                                               key=user.encode()))
            sent.append(time.time())
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


# --- a minimal keep-alive HTTP/1.1 client ---------------------------------------------
class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, key: str = KEY) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: b\r\nX-API-Key: {key}\r\n"
                          f"Content-Length: 0\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(port: int, users: list[str], *, concurrency: int, duration: float,
               rate: float = 0.0, once: bool = False) -> dict[str, Any]:
    """GET embeddings at `rate` req/s (0 = closed loop). once=True: each user once."""
    lat_hit: list[float] = []
    lat_miss: list[float] = []
    errors = 0
    versions: set[str] = set()
    queue = list(users)
    rng = random.Random(7)
    start = time.perf_counter()
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        conn = Conn(port)
        try:
            while True:
                now = time.perf_counter()
                if now - start > duration or (once and not queue):
                    return
                n = counter
                counter += 1
                if rate > 0:
                    delay = start + n / rate - now
                    if delay > 0:
                        await asyncio.sleep(delay)
                user = queue.pop() if once else rng.choice(users)
                t0 = time.perf_counter()
                try:
                    status, body = await conn.request("GET", f"/v1/users/{user}/embedding")
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    conn.close()
                    conn = Conn(port)
                    continue
                elapsed = time.perf_counter() - t0
                if status != 200:
                    errors += 1
                    continue
                cached = b'"cached":true' in body
                versions.add(re.search(rb'"model_version":"([^"]+)"', body).group(1).decode())  # type: ignore[union-attr]
                (lat_hit if cached else lat_miss).append(elapsed)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"hits": lat_hit, "misses": lat_miss, "errors": errors, "wall": wall,
            "versions": sorted(versions),
            "throughput": (len(lat_hit) + len(lat_miss)) / wall}


def raw_onnx_ms(registry_root: Path, texts: list[str], batch: int, runs: int = 30) -> float:
    """Median session.run time (ms) of batches of `batch` of these texts, tokenizer excluded."""
    from serving.encoder import OnnxEncoder

    mv = Registry(registry_root).get(V1)
    enc = OnnxEncoder(mv.path, int(mv.manifest["max_tokens"]), device="cpu")
    enc.warm_up((1, batch))
    times = []
    for n in range(runs):
        chunk = [texts[(n * batch + i) % len(texts)] for i in range(batch)]
        ids, mask = enc.tokenize(chunk)
        t0 = time.perf_counter()
        enc.run(ids, mask)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def texts_of(values: list[bytes], max_tokens: int) -> list[str]:
    from mekb.scoring import sequence_text

    return [sequence_text([e["title"] for e in json.loads(v)["entities"]], max_tokens)
            for v in values]


async def freshness(settings: Settings, port: int, users: list[str], words: list[str],
                    rate: float, duration: float, version0: int,
                    probe_every: int) -> dict[str, Any]:
    rng = random.Random(11)
    n = int(rate * duration)
    batch = [(users[k % len(users)], version0 + k // len(users)) for k in range(n)]
    values = [(u, user_value(u, v, rng, words)) for u, v in batch]
    lags: list[float] = []
    probes: list[asyncio.Task[None]] = []

    async def probe(user: str, version: int, ts: float) -> None:
        conn = Conn(port)
        try:
            # Poll the cheap /mekb until the update is applied, then fetch the embedding
            # once (polling the embedding itself would compute every intermediate version).
            deadline = time.time() + 30
            while time.time() < deadline:
                _, body = await conn.request("GET", f"/v1/users/{user}/mekb")
                got = int(re.search(rb'"mekb_version":(\d+)', body).group(1))  # type: ignore[union-attr]
                if got >= version:
                    _, body = await conn.request("GET", f"/v1/users/{user}/embedding")
                    got = int(re.search(rb'"mekb_version":(\d+)', body).group(1))  # type: ignore[union-attr]
                    if got >= version:
                        lags.append(time.time() - ts)
                    return
                await asyncio.sleep(0.01)
        finally:
            conn.close()

    from aiokafka import AIOKafkaProducer

    from mekb.kafka_config import aiokafka_config

    producer = AIOKafkaProducer(**aiokafka_config(settings), linger_ms=2)
    await producer.start()
    start = time.perf_counter()
    try:
        for k, ((user, version), (_, value)) in enumerate(zip(batch, values, strict=True)):
            if k % max(1, int(rate / 50)) == 0:
                delay = start + k / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            obj = json.loads(value)
            # event time and the worker's update = now: lags measure serving only
            obj["ts"] = obj["updated_at"] = time.time()
            await producer.send(settings.topic("mekb-updates"), json.dumps(obj).encode(),
                                key=user.encode())
            if k % probe_every == 0:
                probes.append(asyncio.ensure_future(probe(user, version, obj["ts"])))
        await producer.flush()
        achieved = n / (time.perf_counter() - start)
    finally:
        await producer.stop()
    await asyncio.gather(*probes)
    return {"lags": lags, "probes": len(probes), "achieved_rate": achieved}


async def hot_swap(port: int, users: list[str], rate: float, duration: float) -> dict[str, Any]:
    async def swaps() -> list[int]:
        conn = Conn(port)
        codes = []
        try:
            await asyncio.sleep(duration * 0.25)
            codes.append((await conn.request("POST", f"/v1/models/{V2}/activate", ADMIN))[0])
            await asyncio.sleep(duration * 0.25)
            codes.append((await conn.request("POST", "/v1/models/rollback", ADMIN))[0])
        finally:
            conn.close()
        return codes

    result, codes = await asyncio.gather(
        load(port, users, concurrency=16, duration=duration, rate=rate), swaps())
    result["swap_codes"] = codes
    return result


def batch_mean(before: dict[str, float], after: dict[str, float], priority: str) -> float:
    s = 'mekb_serving_batch_size_sequences_{}{{priority="{}"}}'
    count = after.get(s.format("count", priority), 0) - before.get(s.format("count", priority), 0)
    total = after.get(s.format("sum", priority), 0) - before.get(s.format("sum", priority), 0)
    return total / count if count else float("nan")


def onnx_mean_ms(before: dict[str, float], after: dict[str, float]) -> float:
    c = "mekb_serving_onnx_inference_seconds_count"
    s = "mekb_serving_onnx_inference_seconds_sum"
    n = after.get(c, 0) - before.get(c, 0)
    return (after.get(s, 0) - before.get(s, 0)) / n * 1000 if n else float("nan")


def hist_quantile(before: dict[str, float], after: dict[str, float], name: str,
                  q: float, labels: str = "") -> float:
    """Upper bucket bound holding the q-quantile of a histogram's increase (server side)."""
    prefix = f"{name}_bucket{{{labels + ',' if labels else ''}le=\""
    buckets = sorted(
        (float(k[len(prefix):].split('"')[0]), after[k] - before.get(k, 0.0))
        for k in after if k.startswith(prefix)
    )
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    total = buckets[-1][1]
    for bound, cum in buckets:
        if cum >= q * total:
            return bound
    return float("inf")


EMB = 'endpoint="/v1/users/{user_id}/embedding"'
REQ = "mekb_serving_request_duration_seconds"


def ms(v: float) -> float:
    return round(v * 1000, 2)


async def one_repeat(args: argparse.Namespace, settings: Settings, server: Server,
                     registry_root: Path, users: list[str], words: list[str],
                     version: int) -> tuple[dict[str, Any], int]:
    rng = random.Random(version)
    port = server.port
    out: dict[str, Any] = {}
    # 1. cache hits (warm every user first)
    await load(port, users, concurrency=8, duration=600, once=True)
    before = server.metrics()
    hit = await load(port, users, concurrency=args.hit_concurrency, duration=args.duration,
                     rate=args.hit_rate)
    after = server.metrics()
    lat = hit["hits"]
    out["hit"] = {"p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)),
                  "throughput": round(hit["throughput"], 1), "errors": hit["errors"],
                  "misses": len(hit["misses"]),
                  "server_p99_ms_le": ms(hist_quantile(before, after, REQ, 0.99, EMB))}
    # 2. misses at each concurrency
    out["miss"] = {}
    for conc in args.miss_concurrency:
        version += 1
        values = [(u, user_value(u, version, rng, words)) for u in users]
        await produce(settings, values)
        await asyncio.sleep(3.0)  # applied; the refresher only precomputes a small part
        before = server.metrics()
        miss = await load(port, list(users), concurrency=conc,
                          duration=args.duration, once=True)
        after = server.metrics()
        lat = miss["misses"]
        bsz = batch_mean(before, after, "request")
        texts = texts_of([v for _, v in values], args.max_tokens)
        raw = raw_onnx_ms(registry_root, texts, max(1, round(bsz)) if bsz == bsz else conc)
        run_ms = onnx_mean_ms(before, after)
        onnx_total = (after.get("mekb_serving_onnx_inference_seconds_sum", 0)
                      - before.get("mekb_serving_onnx_inference_seconds_sum", 0))
        out["miss"][conc] = {
            "p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)), "n": len(lat),
            "throughput": round(len(lat) / miss["wall"], 1), "errors": miss["errors"],
            "server_batch_mean": round(bsz, 2), "server_onnx_ms": round(run_ms, 2),
            # per request: latency vs the session.run of the batch it rode in (server)
            "ratio_p50_vs_run": round(pct(lat, 0.5) * 1000 / run_ms, 2),
            # the whole phase: wall time vs the ONNX time of exactly those batches
            "ratio_wall_vs_onnx": round(miss["wall"] / onnx_total, 2) if onnx_total else None,
            # the same texts and batch size in a separate session in this process
            "raw_onnx_ms": round(raw, 2), "ratio_p50_vs_raw": round(pct(lat, 0.5) * 1000 / raw, 2),
        }
    # 3. freshness at a fixed update rate
    version += 1
    before = server.metrics()
    fresh = await freshness(settings, port, users, words, args.update_rate, args.duration,
                            version, args.probe_every)
    version += int(args.update_rate * args.duration) // len(users) + 1
    await asyncio.sleep(2.0)
    after = server.metrics()
    refresh = {k.split('"')[1]: after[k] - before.get(k, 0) for k in after
               if k.startswith("mekb_serving_refresh_users_total{")}
    out["freshness"] = {
        "p50_s": round(pct(fresh["lags"], 0.5), 3), "p99_s": round(pct(fresh["lags"], 0.99), 3),
        "server_applied_p99_s_le": hist_quantile(
            before, after, "mekb_serving_processing_lag_seconds", 0.99),
        "server_precompute_p99_s_le": hist_quantile(
            before, after, "mekb_serving_precompute_lag_seconds", 0.99),
        "probes": fresh["probes"], "answered": len(fresh["lags"]),
        "achieved_rate": round(fresh["achieved_rate"], 1), "refresher": refresh,
        "refresher_capacity_users_per_s": round(
            after.get("mekb_serving_refresher_capacity_users_per_second", 0), 1),
    }
    # 4. hot swap under the hit load
    await load(port, users, concurrency=8, duration=600, once=True)
    swap = await hot_swap(port, users, args.hit_rate, args.duration)
    out["hot_swap"] = {"errors": swap["errors"], "swap_codes": swap["swap_codes"],
                       "requests": len(swap["hits"]) + len(swap["misses"]),
                       "versions_seen": swap["versions"],
                       "p99_ms": ms(pct(swap["hits"] + swap["misses"], 0.99))}
    return out, version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hit-rate", type=float, default=500.0)
    ap.add_argument("--hit-concurrency", type=int, default=16)
    ap.add_argument("--miss-concurrency", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 8])
    ap.add_argument("--update-rate", type=float, default=1000.0)
    ap.add_argument("--probe-every", type=int, default=100,
                    help="probe the embedding of every N-th update (each probe is an "
                    "on-demand computation: keep probes/s under the encoder's capacity)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep bundles here between runs (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    registry_root = build_registry(work / f"models-{args.max_tokens}", args.max_tokens)
    Registry(registry_root).activate(V1)
    words = vocabulary(registry_root)
    data = work / f"run-{int(time.time())}"
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
                            topic_prefix=f"bs{int(time.time())}-", partitions=2, data_dir=data)
        create_topics(settings)
        users = [f"user{n}" for n in range(args.users)]
        rng = random.Random(1)
        asyncio.run(produce(settings, [(u, user_value(u, 1, rng, words)) for u in users]))
        server = Server(settings, registry_root, work / "serve.log")
        server.start()
        runs = []
        version = 1
        try:
            for r in range(args.repeat):
                result, version = asyncio.run(one_repeat(args, settings, server, registry_root,
                                                         users, words, version))
                print(f"repeat {r + 1}: {json.dumps(result)}", flush=True)
                runs.append(result)
        finally:
            server.stop()
    summary = summarise(runs, args)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def med(get: Any) -> float:
        return round(statistics.median(get(r) for r in runs), 3)

    miss = {c: {k: med(lambda r, c=c, k=k: r["miss"][c][k])
                for k in ("p50_ms", "p99_ms", "throughput", "server_batch_mean",
                          "server_onnx_ms", "ratio_p50_vs_run", "ratio_wall_vs_onnx",
                          "raw_onnx_ms", "ratio_p50_vs_raw")}
            for c in args.miss_concurrency}
    return {
        "config": {"duration_s": args.duration, "repeat": args.repeat, "users": args.users,
                   "max_tokens": args.max_tokens, "hit_rate": args.hit_rate,
                   "hit_concurrency": args.hit_concurrency, "update_rate": args.update_rate},
        "hit": {k: med(lambda r, k=k: r["hit"][k])
                for k in ("p50_ms", "p99_ms", "throughput", "errors", "server_p99_ms_le")},
        "miss": miss,
        "freshness": {k: med(lambda r, k=k: r["freshness"][k])
                      for k in ("p50_s", "p99_s", "achieved_rate", "server_applied_p99_s_le",
                                "server_precompute_p99_s_le",
                                "refresher_capacity_users_per_s")},
        "hot_swap_errors": sum(r["hot_swap"]["errors"] for r in runs),
        "targets": TARGETS,
    }


if __name__ == "__main__":
    main()
