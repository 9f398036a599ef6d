"""Kafka inputs of the server: `mekb-updates` into the replica, `model-updates` as a wake-up.

mekb-updates: every partition is assigned manually (no consumer group: each serving
replica needs every user of its shard; a sharded replica, MEKB_SERVING_SHARD=i/n, only
the partitions p with p % n == i) and read from the offsets stored in the replica itself,
so a restart resumes exactly, and an empty replica rebuilds from the compacted
topic. Offsets stored under another topic id than the topic's now (it was re-created,
or the embedded broker restarted: mekb/topics.py) are dropped and the new topic is
read from its beginning; the users stay, and their versions decide what is newer.
The replica counts as caught up once every partition's position reached the
end offset seen at start. (On Tansu, ListOffsets LATEST can be short by the last
multi-record batch, so "caught up" may be declared a few records early there; the
records still arrive a moment later.)

model-updates: read from the end (the registry's ACTIVE pointer is the state; an
event only says "look now"), so no history is replayed on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from mekb.kafka_config import aiokafka_config
from mekb.settings import Settings
from mekb.topics import new_topic_ids, rebase_needed, topic_ids
from serving.replica import Incoming, Replica
from serving.service import EmbeddingService
from serving.sharding import ShardMap

logger = logging.getLogger(__name__)

FETCH_MAX_RECORDS = 5_000
# How long the broker may hold a fetch with nothing new (aiokafka's default: 500 ms). A
# replica that has caught up waits that long per fetch round when the broker answers
# at the end of the wait instead of on arrival, which adds directly to freshness.
FETCH_MAX_WAIT_MS = 100


async def _partitions(consumer: Any, topic: str, stop: asyncio.Event) -> list[int] | None:
    """Partitions of `topic`, waiting (not creating it) until it exists."""
    warned = False
    while not stop.is_set():
        parts = await consumer._client.fetch_all_metadata()  # fresh metadata, not a cache
        found = parts.partitions_for_topic(topic)
        if found:
            return sorted(found)
        if not warned:
            logger.warning("topic %s does not exist yet; waiting (create it with "
                           "`mekb topics create`)", topic)
            warned = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    return None


async def follow_mekb_updates(
    settings: Settings, replica: Replica, service: EmbeddingService, stop: asyncio.Event,
    shards: ShardMap | None = None,
) -> None:
    """Apply mekb-updates to the replica until `stop` is set; with `shards`, only the
    partitions of this replica's shard (serving/sharding.py)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.topic("mekb-updates")
    consumer = AIOKafkaConsumer(
        **aiokafka_config(settings), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", client_id="mekb-serve-replica",
        max_partition_fetch_bytes=4 << 20, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    await consumer.start()
    recreated: asyncio.Task[dict[str, str]] | None = None
    try:
        parts = await _partitions(consumer, topic, stop)
        if parts is None:
            return
        if shards is not None and shards.shard.sharded:
            # The routing rule hashes with the topic's real partition count.
            shards.partitions = len(parts)
            parts = [p for p in parts if shards.shard.owns_partition(p)]
            logger.info("replica: shard %s follows partitions %s of %d", shards.shard, parts,
                        shards.partitions)
            if not parts:
                logger.warning("replica: shard %s owns no partition of %s (%d partitions): "
                               "use at most as many shards as partitions", shards.shard,
                               topic, shards.partitions)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        stored, topic_id = await _stored_offsets(settings, replica, consumer, topic, tps)
        for tp in tps:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        target = await consumer.end_offsets(tps)
        logger.info("replica: %d partitions of %s, resuming at %s, end %s", len(tps), topic,
                    {tp.partition: stored.get(tp.partition, 0) for tp in tps},
                    {tp.partition: off for tp, off in target.items()})
        caught: set[int] = set()
        metrics = service.metrics
        # The topic re-created under us (the embedded broker restarted): start over, the
        # start above rebases the offsets.
        recreated = asyncio.create_task(
            new_topic_ids(settings, {topic: topic_id} if topic_id else {}, stop))
        while not stop.is_set():
            if recreated.done() and recreated.result():
                raise TopicRecreated(f"{topic} is a new topic (id {recreated.result()})")
            batches = await consumer.getmany(timeout_ms=200, max_records=FETCH_MAX_RECORDS)
            records = [
                Incoming(tp.partition, msg.offset, msg.key, msg.value)
                for tp, msgs in batches.items() for msg in msgs
            ]
            if records:
                result = replica.apply(records)
                service.on_applied(result)
            polled = [consumer.last_poll_timestamp(tp) for tp in tps]  # ms, None if never
            if any(polled):
                service.upstream_seen_at = max(p for p in polled if p) / 1000.0
            lag = 0
            for tp in tps:
                position = await consumer.position(tp)
                if tp.partition not in caught and position >= target.get(tp, 0):
                    caught.add(tp.partition)
                high = consumer.highwater(tp)
                if high is not None:
                    lag += max(0, high - position)
            metrics.replica_lag.set(lag)
            if not service.replica_caught_up and len(caught) == len(tps):
                service.replica_caught_up = True
                logger.info("replica caught up with %s", topic)
    finally:
        if recreated is not None:
            recreated.cancel()
        await consumer.stop()


async def _stored_offsets(settings: Settings, replica: Replica, consumer: Any, topic: str,
                          tps: list[Any]) -> tuple[dict[int, int], str | None]:
    """The replica's offsets if they belong to `topic` as it is now, else none (rebased);
    and the topic's id."""
    current = (await asyncio.to_thread(topic_ids, settings, [topic])).get(topic)
    recorded = replica.topic_id()
    stored = replica.offsets()
    void = rebase_needed(recorded, current)
    if current is None and stored:
        # A broker without topic ids: an offset beyond the end is another topic's.
        ends = await consumer.end_offsets(tps)
        void = any(stored.get(tp.partition, 0) > end for tp, end in ends.items())
    if void:
        logger.warning("replica: %s is a new topic (id %s, was %s): offsets %s dropped, "
                       "reading it from the beginning; %d users kept", topic, current,
                       recorded, stored, replica.count_users())
        replica.set_topic_id(current, rebase=True)
        return {}, current
    if current is not None and recorded is None:  # offsets from before ids were recorded
        replica.set_topic_id(current, rebase=False)
    return stored, current


class TopicRecreated(RuntimeError):
    """The topic being followed got a new id: follow it again from the start-up path."""


async def follow_model_updates(settings: Settings, wake: asyncio.Event,
                               stop: asyncio.Event) -> None:
    """Set `wake` on every model-updates event (the manager then re-reads ACTIVE)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.topic("model-updates")
    consumer = AIOKafkaConsumer(
        **aiokafka_config(settings), group_id=None, enable_auto_commit=False,
        auto_offset_reset="latest", client_id="mekb-serve-models",
    )
    await consumer.start()
    try:
        parts = await _partitions(consumer, topic, stop)
        if parts is None:
            return
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                for msg in msgs:
                    logger.info("model-updates: %s", (msg.value or b"")[:200].decode(
                        "utf-8", "replace"))
                    wake.set()
    finally:
        await consumer.stop()


async def supervise(name: str, stop: asyncio.Event, run: Any) -> None:
    """Run a consumer coroutine factory; restart it after a failure (broker down, ...)."""
    delay = 1.0
    while not stop.is_set():
        try:
            await run()
            delay = 1.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("%s failed (%s: %s); retrying in %.0fs", name, type(exc).__name__,
                           exc, delay)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 30.0)
