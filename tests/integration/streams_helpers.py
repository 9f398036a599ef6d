"""Helpers of the stream worker integration tests: real worker processes, real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from mekb.broker import free_port
from mekb.kafka_config import kafka_python_config
from mekb.settings import Settings
from streams.dftable import DfTable
from streams.kafka_io import MARKER
from tests.integration.helpers import ChildProcess


def worker_env(settings: Settings, alias: Path, worker_id: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    env.update({
        "MEKB_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
        "MEKB_BROKER_FLAVOR": "tansu",
        "MEKB_TOPIC_PREFIX": settings.topic_prefix,
        "MEKB_PARTITIONS": str(settings.partitions),
        "MEKB_DATA_DIR": str(settings.data_dir),
        "MEKB_ALIAS_TABLE": str(alias),
        "MEKB_WORKER_ID": worker_id,
        "MEKB_WORKER_PORT": str(port),
        "MEKB_TARGET_DOMAINS": settings.target_domains,
        "MEKB_MEKB_MAX_ENTITIES": str(settings.mekb_max_entities),
    })
    if settings.example_entities is not None:
        env["MEKB_EXAMPLE_ENTITIES"] = str(settings.example_entities)
    for name in ("decay_half_life_s", "decay_min_k", "user_ttl_s"):
        env[f"MEKB_{name.upper()}"] = str(getattr(settings, name))
    return env


class Worker(ChildProcess):
    stop_grace_s = 20.0

    def __init__(self, settings: Settings, alias: Path, worker_id: str, log: Path,
                 runtime: str = "aiokafka") -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mekb.cli.main", "worker", "--runtime", runtime],
            env=worker_env(settings, alias, worker_id, self.port),
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: "
                                     f"{self.log.read_text()[-3000:]}")
            health = self.health()
            if health and health["status"] == "ok" and health["partitions"]:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def wait_items(self, n: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if f"mekb_streams_items {float(n)}" in self.metrics():
                return
            time.sleep(0.2)
        raise AssertionError(f"items not linked: {self.log.read_text()[-2000:]}")


def produce(settings: Settings, topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(**kafka_python_config(settings), linger_ms=5,
                             batch_size=256 * 1024)
    for key, value in pairs:
        producer.send(settings.topic(topic), key=key, value=value)
    producer.flush()
    producer.close()


def read_topic(settings: Settings, topic: str, idle_s: float = 1.0) -> list[Any]:
    consumer = KafkaConsumer(
        settings.topic(topic), **kafka_python_config(settings), auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 << 20,
    )
    records: list[Any] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(r for r in batch if r.key != MARKER)
                last = time.monotonic()
    finally:
        consumer.close()
    return records


def latest_mekbs(settings: Settings) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for rec in read_topic(settings, "mekb-updates"):  # each partition in offset order
        if rec.value is None:  # tombstone: the user was deleted or expired
            latest.pop(rec.key.decode(), None)
            continue
        value = json.loads(rec.value)
        seen = latest.get(value["user_id"])
        if seen is None or value["version"] >= seen["version"]:
            latest[value["user_id"]] = value
    return latest


def df_table(settings: Settings) -> DfTable:
    table = DfTable()
    for rec in read_topic(settings, "df-partials"):
        table.apply(rec.key, rec.value)
    return table


def state_diff(
    settings: Settings, ref: dict[str, dict[str, float]], ref_df: dict[str, int], ref_n: int,
) -> str:
    """'' when the published state equals the reference exactly, else what differs."""
    mekbs = latest_mekbs(settings)
    got = {u: {e["id"]: e["k"] for e in m["entities"]} for u, m in mekbs.items()}
    problems = []
    for user in sorted(set(ref) | set(got)):
        want, have = ref.get(user, {}), got.get(user, {})
        if set(want) != set(have) or any(abs(want[e] - have[e]) > 1e-9 for e in want):
            problems.append(f"user {user}: want {sorted(want.items())[:4]}... "
                            f"have {sorted(have.items())[:4]}...")
    table = df_table(settings)
    if table.df != ref_df:
        bad = {e for e in set(ref_df) | set(table.df) if ref_df.get(e) != table.df.get(e)}
        problems.append(f"df differs on {len(bad)} entities, e.g. "
                        f"{[(e, ref_df.get(e), table.df.get(e)) for e in sorted(bad)[:3]]}")
    if table.n_users != ref_n:
        problems.append(f"N: want {ref_n} have {table.n_users}")
    return "\n".join(problems[:10])


def wait_exact(settings: Settings, ref: dict[str, dict[str, float]], ref_df: dict[str, int],
               ref_n: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    diff = "never compared"
    while time.monotonic() < deadline:
        diff = state_diff(settings, ref, ref_df, ref_n)
        if not diff:
            return
        time.sleep(1.0)
    raise AssertionError(f"state not exact after {timeout_s:.0f}s:\n{diff}")
