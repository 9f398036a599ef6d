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

    def __init__(self, log: list[str], fail_on: str | None = None, ack_s: float = 0.0) -> None:
        self.log = log
        self.fail_on = fail_on
        self.ack_s = ack_s  # > 0: acknowledgements arrive later, as from a broker
        self.offsets: dict[tuple[str, int], int] = {}

    def create_batch(self) -> Batch:
        return Batch()

    def _future(self, topic: str, partition: int, n: int) -> asyncio.Future[Meta]:
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + n
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Meta] = loop.create_future()
        if self.ack_s:
            loop.call_later(self.ack_s, fut.set_result, Meta(base))
        else:
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


def make_worker(log: list[str], *, exactly_once: bool, fail_on: str | None = None,
                ack_s: float = 0.0) -> tuple[StreamWorker, MeKBPartition]:
    settings = Settings(bootstrap_servers="h:1", broker_flavor="kafka", topic_prefix="t-",
                        exactly_once=exactly_once)
    store = Store(log)
    worker = StreamWorker(settings, store, None,  # type: ignore[arg-type] - no linking here
                          StreamMetrics(CollectorRegistry()))
    worker._producer = Producer(log, fail_on, ack_s)
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


class Consumer:
    """What `_step` and `_observe` use of an aiokafka consumer; commits are logged."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.log.append(f"commit {sorted(offsets.values())}")

    def highwater(self, tp: Any) -> None:
        return None


def fetched(first_offset: int, event_id: str) -> dict[Any, list[Any]]:
    from aiokafka import TopicPartition
    from aiokafka.structs import ConsumerRecord

    body = {"event_id": event_id, "user_id": "u", "item_id": "i1", "domain": "action",
            "action": "click", "ts": 1.0}
    value = json.dumps(body).encode()
    record = ConsumerRecord("t-interactions", 0, first_offset, 0, 0, b"u", value, None,
                            len(b"u"), len(value), [])
    return {TopicPartition("t-interactions", 0): [record]}


def test_pipelined_batches_become_durable_and_commit_in_order() -> None:
    log: list[str] = []
    worker, _ = make_worker(log, exactly_once=False, ack_s=0.02)
    consumer = Consumer(log)

    async def two_batches() -> None:
        await worker._step(fetched(0, "e1"), consumer, "t-interactions")
        # Batch 1 is being made durable in the background; batch 2 is processed now
        # and handed over only after batch 1 has committed.
        await worker._step(fetched(1, "e2"), consumer, "t-interactions")
        await worker._drain()

    asyncio.run(two_batches())
    commits = [i for i, step in enumerate(log) if step.startswith("commit")]
    assert [log[i] for i in commits] == ["commit [1]", "commit [2]"]
    sends = [i for i, step in enumerate(log) if step == "send mekb-changelog"]
    assert len(sends) == 2 and sends[0] < commits[0] < sends[1] < commits[1]
    assert worker.metrics.events.labels("mekb", "applied")._value.get() == 2


def test_a_failed_batch_stops_the_agent_before_anything_later_is_sent() -> None:
    log: list[str] = []
    worker, _ = make_worker(log, exactly_once=False, fail_on="mekb-changelog")
    consumer = Consumer(log)

    async def two_batches() -> None:
        await worker._step(fetched(0, "e1"), consumer, "t-interactions")
        await worker._step(fetched(1, "e2"), consumer, "t-interactions")

    with pytest.raises(RuntimeError, match="broker refused"):
        asyncio.run(two_batches())
    assert log.count("send training-examples") == 1  # batch 2 never left the process
    assert not any(step.startswith("commit") for step in log)
    with pytest.raises(RuntimeError):  # and every later drain says so again
        asyncio.run(worker._drain())
