"""The worker's commit order, in-process against a recording fake producer: what is
acknowledged before what, at-least-once (Tansu) and in one transaction (exactly_once,
which needs Apache Kafka and so cannot run against the embedded broker)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mekb.settings import Settings
from streams.catalog import LinkedItem
from streams.codec import loads
from streams.metrics import StreamMetrics
from streams.partition import LOCAL, InRecord, MeKBPartition, store_prefix
from streams.state.memory import MemoryStore
from streams.worker import StreamWorker


class Store(MemoryStore):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        self.log.append("rocksdb")
        super().write(changes)


class Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: Any) -> object:
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class Meta:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Producer:
    """Records every send; a send is acknowledged when its future is awaited."""

    def __init__(self, log: list[str], fail_on: str | None = None) -> None:
        self.log = log
        self.fail_on = fail_on
        self.offsets: dict[tuple[str, int], int] = {}

    def create_batch(self) -> Batch:
        return Batch()

    def _future(self, topic: str, partition: int, n: int) -> asyncio.Future[Meta]:
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + n
        fut: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        fut.set_result(Meta(base))
        return fut

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[Meta]:
        name = topic.split("-", 1)[1]  # drop the test prefix
        if name == self.fail_on:
            raise RuntimeError(f"broker refused {name}")
        self.log.append(f"send {name}")
        return self._future(topic, partition, batch.record_count())

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Meta]:
        self.log.append(f"send {topic.split('-', 1)[1]}")
        return self._future(topic, 0, 1)

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        self.log.append(f"offsets {sorted(offsets.values())}")

    @asynccontextmanager
    async def transaction(self) -> Any:
        self.log.append("begin")
        try:
            yield
        except BaseException:
            self.log.append("abort")
            raise
        self.log.append("commit")


def make_worker(log: list[str], *, exactly_once: bool,
                fail_on: str | None = None) -> tuple[StreamWorker, MeKBPartition]:
    settings = Settings(bootstrap_servers="h:1", broker_flavor="kafka", topic_prefix="t-",
                        exactly_once=exactly_once)
    store = Store(log)
    worker = StreamWorker(settings, store, None,  # type: ignore[arg-type] - no linking here
                          StreamMetrics(CollectorRegistry()))
    worker._producer = Producer(log, fail_on)
    worker.catalog.put(LinkedItem("i1", "action", (("kb:Nolan", "Nolan", 1.0),), "d"))
    part = MeKBPartition(0, store, worker.config, worker.catalog, worker.dftable)
    part.load()
    worker.partitions[0] = part
    return worker, part


def records() -> list[InRecord]:
    body = {"event_id": "e1", "user_id": "u", "item_id": "i1", "domain": "action",
            "action": "click", "ts": 1.0}
    return [InRecord(0, b"u", json.dumps(body).encode()), InRecord(1, b"u", b"{broken")]


def test_at_least_once_order_outputs_changelog_rocksdb_df() -> None:
    log: list[str] = []
    worker, part = make_worker(log, exactly_once=False)
    plan = part.process(records(), now=5.0)
    assert plan.next_offset == 2
    asyncio.run(worker._durable([plan]))
    first = {step: log.index(step) for step in log}
    outputs = [first["send dead-letters"], first["send training-examples"],
               first["send mekb-updates"]]
    assert max(outputs) < first["send mekb-changelog"] < first["rocksdb"]
    assert first["rocksdb"] < first["send df-partials"]
    # RocksDB remembers where a restore resumes reading the changelog.
    local = loads(worker.store.get(store_prefix(0) + LOCAL) or b"{}")
    assert local["changelog_next"] == 1 and part.changelog_next == 1


def test_exactly_once_one_transaction_then_rocksdb() -> None:
    log: list[str] = []
    worker, part = make_worker(log, exactly_once=True)
    plan = part.process(records(), now=5.0)
    asyncio.run(worker._durable_transaction([plan], {"tp0": 2}))
    begin, commit = log.index("begin"), log.index("commit")
    inside = log[begin + 1:commit]
    assert {"send dead-letters", "send training-examples", "send mekb-updates",
            "send mekb-changelog", "send df-partials", "offsets [2]"} == set(inside)
    assert inside[-1] == "offsets [2]"  # the input offsets commit with the outputs
    assert log[commit + 1:] == ["rocksdb"]  # local state only after the commit


def test_exactly_once_failure_aborts_and_leaves_rocksdb_alone() -> None:
    log: list[str] = []
    worker, part = make_worker(log, exactly_once=True, fail_on="mekb-changelog")
    plan = part.process(records(), now=5.0)
    with pytest.raises(RuntimeError):
        asyncio.run(worker._durable_transaction([plan], {"tp0": 2}))
    assert "abort" in log and "commit" not in log and "rocksdb" not in log
    assert not any(o.startswith("offsets") for o in log)
