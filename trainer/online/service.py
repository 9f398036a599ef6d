"""`mekb trainer` as a process: Kafka in, OnlineTrainer in the middle, offsets out.

The trainer assigns itself every partition of training-examples (one trainer per
registry: it is the registry's only writer) and uses its consumer group only to
commit offsets (lag, and a resume point when its checkpoints are gone). It seeks
each partition to the checkpoint's offset, else the group's committed one, else
the beginning (offsets of another incarnation of the topic are void: see
trainer/online/resume.py). CPU-heavy work runs in a worker thread so fetches and the HTTP
endpoints stay responsive; offsets are committed only with what `OnlineTrainer`
returns, i.e. after checkpoint (and publication) completed (trainer/online/loop.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mekb.kafka_config import aiokafka_config
from mekb.settings import Settings
from mekb.topics import new_topic_ids, topic_ids
from trainer.online.loop import OnlineTrainer, Record, decode
from trainer.online.resume import rebase_offsets

logger = logging.getLogger(__name__)

POLL_MS = 500


@dataclass
class Health:
    phase: str = "starting"  # starting | running | stopping
    source: str = ""
    partitions: list[int] = field(default_factory=list)
    step: int = 0
    examples_seen: int = 0
    active_version: str | None = None
    pinned_version: str | None = None  # while set, new versions are published inactive
    last_error: str | None = None
    records: int = 0  # training-examples records consumed
    # The last poll found nothing and every partition is at its end: with no version yet
    # and nothing upstream either, `mekb up` knows a first version will not come.
    caught_up: bool = False

    def response(self) -> tuple[int, bytes]:
        ok = self.phase == "running"
        body = {"status": "ok" if ok else self.phase, **self.__dict__}
        return (200 if ok else 503), json.dumps(body).encode()


class AlreadyRunning(RuntimeError):
    """Another trainer holds the registry."""


def acquire_lock(path: Path) -> IO[str]:
    """An exclusive, non-blocking flock on `path`, held while the returned file is open
    (the kernel drops it when the process dies, SIGKILL included). One trainer per
    registry: two would publish diverging lineages."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise AlreadyRunning(f"another trainer (pid {holder}) holds {path}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


async def _partitions(consumer: Any, topic: str, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        await consumer.topics()  # refreshes metadata
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} not found (create it: `mekb topics create`)")
        await asyncio.sleep(0.5)


async def _commit(consumer: Any, topic: str, offsets: dict[str, int]) -> None:
    from aiokafka import TopicPartition

    mine = {TopicPartition(topic, int(k.rsplit(":", 1)[1])): v
            for k, v in offsets.items() if k.rsplit(":", 1)[0] == topic}
    if not mine:
        return
    try:
        await consumer.commit(mine)
    except Exception as exc:  # the checkpoint holds the offsets: a lost commit costs lag only
        logger.warning("offset commit failed (%s); the checkpoint keeps them", exc)


async def run(settings: Settings, trainer: OnlineTrainer, health: Health,
              stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.topic("training-examples")
    consumer = AIOKafkaConsumer(
        **aiokafka_config(settings), group_id=settings.topic(settings.trainer_group),
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    try:
        # Serving waits for a first version: publish it before anything else.
        offsets = await asyncio.to_thread(trainer.startup)
        parts = await _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        current = (await asyncio.to_thread(topic_ids, settings, [topic])).get(topic)
        rebased = rebase_offsets(trainer.state, trainer.offsets, topic, current)
        for tp in tps:
            known = trainer.offsets.get(_key(topic, tp.partition))
            if known is None and not rebased:  # (a committed offset of the old topic: no)
                known = await consumer.committed(tp)
            if known is not None:
                consumer.seek(tp, known)
                trainer.offsets[_key(topic, tp.partition)] = int(known)
            else:
                await consumer.seek_to_beginning(tp)
        if offsets:
            await _commit(consumer, topic, offsets)
        health.partitions = parts
        health.phase = "running"
        _sync(health, trainer)
        logger.info("trainer consuming %s partitions %s from %s", topic, parts,
                    {tp.partition: trainer.offsets.get(_key(topic, tp.partition))
                     for tp in tps})
        max_records = max(64, trainer.batch_size * 4, trainer.catchup_batch)
        recreated = _watch(settings, topic, current, stop)
        # One poll trains (in a thread) while the next is fetched and decoded here: the
        # step's torch kernels release the GIL, so the decoding takes the other core.
        training: asyncio.Future[dict[str, int] | None] | None = None

        async def trained() -> None:
            """Wait for the poll in training; commit, lag and health after it."""
            nonlocal training
            if training is None:
                return
            offsets, training = await training, None
            if offsets:
                await _commit(consumer, topic, offsets)
            trainer.metrics.lag.set(bound_lag(consumer, topic, tps, trainer,
                                               settings.trainer_max_lag_records))
            _sync(health, trainer)

        while not stop.is_set():
            if recreated.done() and recreated.result():
                await trained()
                # the topic was re-created under us (the embedded broker restarted):
                # keep the weights, read the new topic from its start
                current = recreated.result().get(topic)
                rebase_offsets(trainer.state, trainer.offsets, topic, current)
                parts = await _partitions(consumer, topic)  # (it may have others now)
                tps = [TopicPartition(topic, p) for p in parts]
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, 0)
                health.partitions = parts
                recreated = _watch(settings, topic, current, stop)
            # owed replay is taken in slices between polls that do not wait for records
            idle_work = trainer.replay_owed and not trainer.behind
            got = await consumer.getmany(timeout_ms=0 if idle_work else POLL_MS,
                                         max_records=max_records)
            fetched = [decode(Record(tp.partition, r.offset, r.value, r.key))
                       for tp, recs in got.items() for r in recs]
            await trained()
            # (records fetched before a skip-ahead may still arrive: below the position,
            # they are dropped)
            records = [r for r in fetched
                       if r.offset >= trainer.offsets.get(_key(topic, r.partition), 0)]
            if records:
                health.records += len(records)
                health.caught_up = False  # (while they are trained and maybe published)
            else:
                health.caught_up = at_end(consumer, topic, tps, trainer)
            trainer.set_backlog(waiting(consumer, topic, tps, trainer) - len(records))
            training = asyncio.ensure_future(asyncio.to_thread(trainer.process, records))
        await trained()
        health.phase = "stopping"
        recreated.cancel()
        offsets = await asyncio.to_thread(trainer.checkpoint_and_offsets)
        await _commit(consumer, topic, offsets)
    finally:
        await consumer.stop()


def _watch(settings: Settings, topic: str, topic_id: str | None,
           stop: asyncio.Event) -> asyncio.Task[dict[str, str]]:
    """Done when `topic` has another id than `topic_id` (never if that is unknown)."""
    known = {topic: topic_id} if topic_id else {}
    return asyncio.create_task(new_topic_ids(settings, known, stop), name="topic-ids")


def waiting(consumer: Any, topic: str, tps: list[Any], trainer: OnlineTrainer) -> int:
    """Records between the trainer's position and the high watermarks (fetched or not)."""
    total = 0
    for tp in tps:
        high = consumer.highwater(tp)
        done = trainer.offsets.get(_key(topic, tp.partition), 0)
        if high is not None:
            total += max(0, int(high) - int(done))
    return total


def bound_lag(consumer: Any, topic: str, tps: list[Any], trainer: OnlineTrainer,
              max_lag: int) -> int:
    """Records not consumed yet, summed over partitions. With max_lag > 0 a partition
    further behind skips ahead to its newest max_lag records: the position (and so the
    next checkpoint and commit) moves there and the records passed over are counted.
    Tansu's high watermark can be low, never high, so a skip never passes the end."""
    lag = 0
    for tp in tps:
        high = consumer.highwater(tp)
        key = _key(topic, tp.partition)
        done = trainer.offsets.get(key)
        if high is None or done is None:
            continue
        behind = max(0, int(high) - int(done))
        if max_lag and behind > max_lag:
            target = int(high) - max_lag
            consumer.seek(tp, target)
            trainer.offsets[key] = target
            trainer.metrics.examples.labels("skipped").inc(target - int(done))
            logger.warning("training-examples partition %d is %d behind: skipped %d "
                           "(MEKB_TRAINER_MAX_LAG_RECORDS=%d)", tp.partition, behind,
                           target - int(done), max_lag)
            behind = max_lag
        lag += behind
    return lag


def at_end(consumer: Any, topic: str, tps: list[Any], trainer: OnlineTrainer) -> bool:
    """Every partition's high watermark is known and the trainer's position is at it (a
    partition never read counts from 0)."""
    for tp in tps:
        high = consumer.highwater(tp)
        if high is None or trainer.offsets.get(_key(topic, tp.partition), 0) < int(high):
            return False
    return True


def _sync(health: Health, trainer: OnlineTrainer) -> None:
    health.step = trainer.state.step
    health.examples_seen = trainer.state.examples_seen
    health.active_version = trainer.registry.active_version()
    pin = trainer.registry.pinned()
    health.pinned_version = pin.version if pin else None
