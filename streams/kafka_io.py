"""Kafka plumbing of the stream worker: batched sends to explicit partitions, table
replicas read to a marker, and changelog reads to a marker.

Catch-up never asks the broker for a partition's end offset (Tansu answers
ListOffsets LATEST wrongly for multi-record batches): a reader first appends a
marker record to the partition, takes the offset the produce response reports,
and reads until it has passed that offset. Everything written before the marker is
then known to have been read. Markers carry the key `MARKER` (control characters
cannot occur in item ids, user ids or entity keys) and are skipped by every reader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from mekb.kafka_config import aiokafka_config
from mekb.settings import Settings

logger = logging.getLogger(__name__)

MARKER = b"\x00marker"
FETCH = {"fetch_max_bytes": 64 << 20, "max_partition_fetch_bytes": 8 << 20}


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        **aiokafka_config(settings),
        "acks": "all",
        "max_batch_size": 1 << 20,
        "max_request_size": 8 << 20,
        "linger_ms": 0,
    }


async def send_records(
    producer: Any, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[asyncio.Future[Any]]:
    """Queue records for one partition as few record batches as fit; returns the
    delivery futures (await them to know the records are durable)."""
    futures: list[asyncio.Future[Any]] = []
    batch = producer.create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"record of {len(value or b'')} bytes exceeds the batch size")
    if batch.record_count():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def write_marker(producer: Any, topic: str, partition: int) -> int:
    meta = await producer.send_and_wait(topic, b"", key=MARKER, partition=partition)
    return int(meta.offset)


async def read_until(
    consumer: Any, topic: str, partition: int, start: int, end: int,
    apply: Callable[[list[Any]], None],
) -> int:
    """Read one partition from `start` through offset `end` (a marker); returns the
    number of records passed to `apply` (markers excluded)."""
    from aiokafka import TopicPartition

    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, start)
    seen = 0
    while True:
        got = await consumer.getmany(tp, timeout_ms=1000, max_records=20_000)
        recs = got.get(tp, [])
        if recs:
            useful = [r for r in recs if r.offset <= end and r.key != MARKER]
            if useful:
                apply(useful)
                seen += len(useful)
            if recs[-1].offset >= end:
                return seen
        elif await consumer.position(tp) > end:
            return seen


class Replica:
    """A whole compacted topic replicated into memory (every partition, no group).
    `ready` is set once everything written before start-up has been applied."""

    def __init__(self, settings: Settings, topic: str,
                 apply: Callable[[list[Any]], None]) -> None:
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.ready = asyncio.Event()
        self.records = 0

    async def run(self, producer: Any, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            **aiokafka_config(self.settings), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", **FETCH,
        )
        await consumer.start()
        try:
            parts = sorted(await producer.partitions_for(self.topic))
            tps = [TopicPartition(self.topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            markers = {tp: await write_marker(producer, self.topic, tp.partition) for tp in tps}
            pending = set(tps)
            while not stop.is_set():
                got = await consumer.getmany(timeout_ms=200, max_records=50_000)
                for tp, recs in got.items():
                    useful = [r for r in recs if r.key != MARKER]
                    if useful:
                        self.apply(useful)
                        self.records += len(useful)
                    if tp in pending and recs and recs[-1].offset >= markers[tp]:
                        pending.discard(tp)
                if not pending and not self.ready.is_set():
                    logger.info("replica of %s ready (%d records)", self.topic, self.records)
                    self.ready.set()
        finally:
            await consumer.stop()
