"""The stream worker process: item agent, MeKB agent, df table, item table.

By default the agents run on aiokafka consumer groups, not faust-streaming agents
(streams/faust_app.py runs this same worker's batch step inside a platform's own
`faust.App`, at Faust's throughput). They keep Faust's model (consumer-group
partitions, a changelogged RocksDB table per partition, global tables as replicas
of compacted topics) without its runtime, for reasons measured here (faust-streaming
0.15.3, mode-streaming 0.7.1, aiokafka 0.14.0, the embedded Tansu broker, 2 shared
cores; `bench/bench_streams.py --faust`):
- Throughput: a Faust agent whose body only counts what `stream.take(10_000,
  within=0.2)` yields (raw serializers, no state, web off) reads 9-14 k events/s
  on a lightly loaded machine (where this worker, doing all its work, does 25-27 k)
  and 4.4-6.7 k under load, against 140-570 k/s for a raw aiokafka consumer on the
  same topic in the same run (docs/benchmarks.md). The per-event pipeline
  (conductor -> topic channel queue -> stream iterator -> take() processor) costs
  ~11 event-loop callbacks, 4 tasks and 2 `mode` wait_first calls per event
  (cProfile), before any MeKB work: a Faust runtime cannot reach the 20 k
  interactions/s target.
- Commit order: take() acks the buffered events in a `finally` when the body
  resumes the generator — also when the body raised, so a failed batch would be
  committed by Faust's periodic commit unless the process died first.
- Exactly-once: Faust commits offsets through its own per-partition transactional
  producers (`{group}-{tpg.group}-{partition}`); outputs, changelog and df partials
  would have to go through that TransactionManager record by record (no batch
  sends) to share the offsets' transaction.
- Recovery: Faust tables recover to ListOffsets LATEST, which Tansu answers wrongly
  (see mekb/kafka_config.py); the restore here reads to a marker instead, writes one
  state record per user per batch, and needs no one-record changelog batches.

Commit order of one batch (MeKB agent), per assigned partition p:
  1. outputs for p (dead letters, training examples, mekb-updates, forwarded
     inline items) sent and acknowledged;
  2. changelog records for p (one per changed user / df_p entry / parked event,
     plus the partition meta) sent and acknowledged -> the batch is durable;
  3. local RocksDB: the same changes plus the changelog position, one WriteBatch;
  4. df partials of p sent and acknowledged (absolute values: re-published in full
     after every restore, so a crash between 2 and 4 loses nothing);
  5. input offsets committed.
Batches are pipelined: batch N+1 is processed (in a thread, see `_step`) while batch
N goes through 1-5, and N+1 starts 1 only after N has committed. If making N durable
fails, N+1 is never sent and the agent stops (its in-memory state is ahead of what
is durable); a restart replays from N's committed offsets.
Delivery guarantee on Tansu (at-least-once + idempotent state): a crash anywhere
replays from the last committed offset; records the state already holds are dropped
by the consumed input offset in the changelogged partition meta, and duplicates the
producer wrote are dropped by the per-user event_id window, so users' counts, df(e)
and N are exactly-once in effect. Stored offsets carry the id of the topic they count in
(mekb/topics.py): after a topic was re-created (or a new embedded broker) they are
rebased and the new changelog, df-partials and mekb-updates are seeded from RocksDB
(`_restore`); the event_id window still drops replayed events. Outputs are
at-least-once: a crash between 1 and 2 re-emits them (same example_id / same user
version). With MEKB_EXACTLY_ONCE on Apache Kafka, 1, 2, 4
and 5 run in one producer transaction (RocksDB is written after it commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from linker.base import Linker
from mekb.kafka_config import aiokafka_config, profile
from mekb.settings import Settings
from mekb.topics import new_topic_ids, rebase_needed, topic_ids
from streams.catalog import ItemCatalog, LinkedItem
from streams.codec import dumps, loads
from streams.config import StreamConfig
from streams.dftable import DfTable
from streams.items import link_items, prepare
from streams.kafka_io import (
    FETCH,
    Replica,
    producer_kwargs,
    read_until,
    send_records,
    write_marker,
)
from streams.metrics import StreamMetrics
from streams.partition import (
    LOCAL,
    META,
    SEEDED,
    FlushPlan,
    InRecord,
    MeKBPartition,
    store_prefix,
)
from streams.state.base import StateStore

logger = logging.getLogger(__name__)

OUTPUT_TOPICS = ("dead-letters", "training-examples", "mekb-updates")
# Topics the worker reads from stored positions or whose contents must agree with its
# state: a new id of any of them while it runs restarts the agents (`run`).
WATCHED_TOPICS = ("interactions", "items", "mekb-changelog", "mekb-updates", "df-partials",
                  "item-entities")


class TopicsRecreated(RuntimeError):
    """Topics the worker depends on got new ids (re-created, or a new embedded broker)."""


@dataclass
class Health:
    ready: bool = False
    partitions: list[int] = field(default_factory=list)
    batches: int = 0
    last_batch_at: float = 0.0
    error: str | None = None
    # Per assigned partition: the interactions topic id and the next input offset whose
    # effects are durable (a caller that sent events waits for these: `mekb up`).
    applied: dict[int, tuple[str | None, int]] = field(default_factory=dict)


class StreamWorker:
    def __init__(
        self, settings: Settings, store: StateStore, linker: Linker,
        metrics: StreamMetrics, *, config: StreamConfig | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.linker = linker
        self.metrics = metrics
        self.config = config or StreamConfig.from_settings(settings)
        self.catalog = ItemCatalog()
        self.dftable = DfTable()
        self.partitions: dict[int, MeKBPartition] = {}
        self.health = Health()
        self._lock = asyncio.Lock()
        self._producer: Any = None
        self._restorer: Any = None
        self._inflight: asyncio.Task[None] | None = None  # the batch being made durable
        self._df_held: list[Any] | None = None  # df-partials read during a batch
        self._n_partitions = settings.partitions
        self._reseed_items = False  # item-entities was re-created under the worker
        self.t = settings.topic

    # --- lifecycle ---------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop`. Topics re-created under the worker (the embedded broker
        restarted: it starts empty) restart the agents in this process: the restore
        rebases and re-seeds from RocksDB, and the item table, which lives in memory
        only, is published again to the new item-entities topic."""
        while True:
            inner = asyncio.Event()
            relay = asyncio.create_task(_relay(stop, inner))
            try:
                await self._run(inner)
                return
            except TopicsRecreated as exc:
                if stop.is_set():
                    return
                logger.warning("%s: restarting the agents on the new topics", exc)
                self.partitions.clear()
                self.health.applied = {}
                self.dftable = DfTable()
                self._inflight = None
                self._reseed_items = True
            finally:
                relay.cancel()

    async def _run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        if self.settings.exactly_once and not profile(self.settings).supports_transactions:
            raise ValueError("MEKB_EXACTLY_ONCE needs Apache Kafka transactions (not Tansu)")
        extra = {}
        if self.settings.exactly_once:
            extra = {"transactional_id": f"{self.t('mekb-streams')}-{self.settings.worker_id}"}
        self._producer = AIOKafkaProducer(**producer_kwargs(self.settings), **extra)
        await self._producer.start()
        isolation = "read_committed" if self.settings.exactly_once else "read_uncommitted"
        self._restorer = AIOKafkaConsumer(
            **aiokafka_config(self.settings), group_id=None, enable_auto_commit=False,
            isolation_level=isolation, **FETCH,
        )
        await self._restorer.start()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await self._check_partitions()
            names = [self.t(n) for n in WATCHED_TOPICS]
            known = await asyncio.to_thread(topic_ids, self.settings, names)
            if self._reseed_items:
                await self._reseed_item_table()
            items_replica = Replica(self.settings, self.t("item-entities"), self._apply_items)
            df_replica = Replica(self.settings, self.t("df-partials"), self._apply_df)
            tasks = [
                asyncio.create_task(items_replica.run(self._producer, stop), name="item-table"),
                asyncio.create_task(df_replica.run(self._producer, stop), name="df-table"),
                asyncio.create_task(self._item_agent(stop), name="item-agent"),
                asyncio.create_task(self._watch(known, stop), name="topic-ids"),
            ]
            ready = asyncio.gather(items_replica.ready.wait(), df_replica.ready.wait())
            await self._until(ready, stop, tasks)
            if not stop.is_set():
                tasks.append(asyncio.create_task(self._mekb_agent(stop), name="mekb-agent"))
                done, _ = await asyncio.wait(
                    [*tasks, asyncio.create_task(stop.wait())],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    exc = task.exception() if task in tasks else None
                    if exc is not None:
                        raise exc
        finally:
            stop.set()
            for task in tasks:
                try:
                    await asyncio.wait_for(task, 15)
                except TopicsRecreated:
                    pass  # raised above
                except Exception as exc:  # noqa: BLE001 - shutting down; log and go on
                    logger.warning("%s ended with %r", task.get_name(), exc)
            await self._restorer.stop()
            await self._producer.stop()

    async def _watch(self, known: dict[str, str], stop: asyncio.Event) -> None:
        now = await new_topic_ids(self.settings, known, stop)
        if now:
            changed = sorted(n for n in known if now.get(n, known[n]) != known[n])
            raise TopicsRecreated(f"new topics: {', '.join(changed)}")

    async def _reseed_item_table(self) -> None:
        """Publish the item table held in memory to a new item-entities topic (keyed by
        item, so every copy of an item lands in one partition and compaction keeps the
        newest)."""
        items = list(self.catalog.items.values())
        futures = [await self._producer.send(self.t("item-entities"), it.encode(),
                                             key=it.item_id.encode()) for it in items]
        await asyncio.gather(*futures)
        self._reseed_items = False
        logger.info("item-entities seeded with the %d items of the table", len(items))

    async def _until(self, aw: Any, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, stopper, *tasks],
                                     return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            exc = task.exception() if task in tasks else None
            if exc is not None:
                raise exc

    async def _check_partitions(self) -> None:
        """Outputs go to the input's partition number: topics must be co-partitioned."""
        counts = {}
        for name in ("interactions", "mekb-changelog", *OUTPUT_TOPICS):
            parts = await self._producer.partitions_for(self.t(name))
            counts[name] = len(parts or ())
        if len(set(counts.values())) != 1 or not counts["interactions"]:
            raise ValueError(f"topics must exist with equal partition counts: {counts} "
                             "(run `mekb topics create`)")
        self._n_partitions = counts["interactions"]

    # --- replicas ----------------------------------------------------------
    def _apply_items(self, records: list[Any]) -> None:
        self.catalog.put_many([LinkedItem.decode(r.value) for r in records if r.value])
        self.metrics.items.set(len(self.catalog))

    def _apply_df(self, records: list[Any]) -> None:
        if self._df_held is not None:  # a batch is being processed: apply after it
            self._df_held.extend(records)
            return
        for r in records:
            self.dftable.apply(r.key, r.value)
        self.metrics.df_entities.set(len(self.dftable.df))
        self.metrics.users.set(self.dftable.n_users)

    # --- item agent --------------------------------------------------------
    async def _link_partition(self, partition: int, records: list[InRecord]
                              ) -> tuple[list[Any], int | None]:
        """The item agent's work on one partition's records (both runtimes): link, send
        the entities and dead letters, count. Returns the send futures and the next
        offset to commit once they are done."""
        batch = prepare(records, partition, self.catalog)
        # Linking is CPU work in the linker (spaCy/trie): off the event loop.
        linked = await asyncio.to_thread(link_items, self.linker, batch.to_link)
        futures = await send_records(
            self._producer, self.t("item-entities"), partition,
            [(li.item_id.encode(), li.encode()) for li in linked])
        futures += await send_records(
            self._producer, self.t("dead-letters"), partition,
            [(o.key, o.value) for o in batch.dead_letters])
        batch.outcomes["linked"] += len(linked)
        for outcome, n in batch.outcomes.items():
            self.metrics.events.labels("items", outcome).inc(n)
        for reason, n in batch.reasons.items():
            self.metrics.dead_letters.labels("items", reason).inc(n)
        return futures, batch.next_offset

    async def _item_agent(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        prof = profile(self.settings)
        consumer = AIOKafkaConsumer(
            self.t("items"), **aiokafka_config(self.settings),
            group_id=self.t("mekb-items"), enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=prof.session_timeout_ms,
            heartbeat_interval_ms=prof.heartbeat_interval_ms, **FETCH,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                got = await consumer.getmany(timeout_ms=200, max_records=2000)
                if not got:
                    continue
                started = time.perf_counter()
                offsets = {}
                futures = []
                for tp, recs in got.items():
                    sent, next_offset = await self._link_partition(
                        tp.partition, [InRecord(r.offset, r.key, r.value, "items")
                                       for r in recs])
                    futures += sent
                    if next_offset is not None:
                        offsets[tp] = next_offset
                        high = consumer.highwater(tp)
                        if high is not None:
                            self.metrics.lag.labels("items", str(tp.partition)).set(
                                max(0, high - next_offset))
                await asyncio.gather(*futures)
                # Commit after the linked entities are durable (at-least-once; re-linking
                # an item is idempotent: the compacted table keeps the latest).
                await _commit(consumer, offsets)
                self.metrics.batch_seconds.labels("items").observe(time.perf_counter() - started)
        finally:
            await consumer.stop()

    # --- MeKB agent --------------------------------------------------------
    async def _mekb_agent(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        prof = profile(self.settings)
        consumer = AIOKafkaConsumer(
            **aiokafka_config(self.settings), group_id=self.t("mekb-streams"),
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=prof.session_timeout_ms,
            heartbeat_interval_ms=prof.heartbeat_interval_ms,
            max_poll_records=self.settings.worker_batch_max,
            isolation_level="read_committed" if self.settings.exactly_once else
            "read_uncommitted", **FETCH,
        )
        await consumer.start()
        consumer.subscribe([self.t("interactions")], listener=_listener(self, consumer))
        topic = self.t("interactions")
        self.health.ready = True
        try:
            while not stop.is_set():
                got = await consumer.getmany(timeout_ms=200,
                                             max_records=self.settings.worker_batch_max)
                await self._step(got, consumer, topic)
            await self._drain()
        finally:
            self.health.ready = False
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()  # failing anyway: as good as a crash mid-batch
            await consumer.stop()

    async def _step(self, got: dict[Any, list[Any]], consumer: Any, topic: str) -> None:
        """Process batch N+1 while batch N is being made durable, then hand N+1 to the
        background once N is durable and committed: batches become durable strictly
        in order, and the broker's acknowledgements overlap the CPU work.

        The processing runs in a thread so the event loop keeps sending, reading
        acknowledgements and fetching meanwhile. What that thread reads: the
        partitions' own state (only it writes that), the item catalog (single dict
        operations; an item that arrives mid-batch is simply found), the local store
        (RocksDB is thread-safe) and the df table, whose updates are held back until
        the batch is done, so a batch sees one df table, as before."""
        started = time.perf_counter()
        async with self._lock:
            fresh = self.catalog.take_fresh()
            parts = list(self.partitions.values())
            self._df_held = []
            try:
                plans = await asyncio.to_thread(self._process, parts, got, topic, fresh)
            finally:
                held, self._df_held = self._df_held, None
                self._apply_df(held)
            await self._drain()
            self._inflight = asyncio.create_task(
                self._make_durable(plans, consumer, topic, started), name="mekb-durable")

    @staticmethod
    def _process(parts: list[MeKBPartition], got: dict[Any, list[Any]], topic: str,
                 fresh: set[str]) -> list[FlushPlan]:
        from aiokafka import TopicPartition

        now = time.time()
        return [
            part.process([InRecord(r.offset, r.key, r.value)
                          for r in got.get(TopicPartition(topic, part.partition), [])],
                         fresh, now)
            for part in parts
        ]

    async def _drain(self) -> None:
        """Wait for the batch in flight. If making it durable failed, this raises now
        and on every later call: the in-memory state is ahead of what is durable, so
        the agent must stop (a restart replays from the committed offsets)."""
        task = self._inflight
        if task is not None:
            await task
            self._inflight = None

    async def _make_durable(self, plans: list[FlushPlan], consumer: Any, topic: str,
                            started: float) -> None:
        from aiokafka import TopicPartition

        offsets = {TopicPartition(topic, pl.partition): pl.next_offset
                   for pl in plans if pl.next_offset is not None}
        if self.settings.exactly_once:
            await self._durable_transaction(plans, offsets)
        else:
            await self._durable(plans)
            await _commit(consumer, offsets)
        self._observe(plans, consumer, topic, started)

    async def _send_outputs(self, plans: list[FlushPlan]) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = []
        for plan in plans:
            by_topic: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
            for out in plan.outputs:
                if out.topic == "items":  # forwarded inline item: partitioned by item key
                    futures.append(await self._producer.send(self.t("items"), out.value,
                                                             key=out.key))
                else:
                    by_topic.setdefault(out.topic, []).append((out.key, out.value))
            for name, records in by_topic.items():
                futures += await send_records(self._producer, self.t(name), plan.partition,
                                              records)
        return futures

    async def _send_changelog(self, plans: list[FlushPlan]) -> dict[int, list[Any]]:
        futures = {}
        for plan in plans:
            if plan.changes:
                futures[plan.partition] = await send_records(
                    self._producer, self.t("mekb-changelog"), plan.partition,
                    list(plan.changes.items()))
        return futures

    def _write_local(self, plan: FlushPlan, changelog_next: int) -> None:
        part = self.partitions[plan.partition]
        prefix = store_prefix(plan.partition)
        changes: dict[bytes, bytes | None] = {prefix + k: v for k, v in plan.changes.items()}
        changes[prefix + LOCAL] = part.local_value(changelog_next)
        self.store.write(changes)

    async def _durable(self, plans: list[FlushPlan]) -> None:
        # 1. outputs
        await asyncio.gather(*await self._send_outputs(plans))
        # 2. changelog (the batch is durable once these are acknowledged)
        sent = await self._send_changelog(plans)
        for p, futures in sent.items():
            metas = await asyncio.gather(*futures)
            plan = next(pl for pl in plans if pl.partition == p)
            # 3. local RocksDB, with the changelog position it reflects
            self._write_local(plan, _changelog_next(metas))
        # 4. df partials
        futures = []
        for plan in plans:
            if plan.df_partials:
                futures += await send_records(self._producer, self.t("df-partials"),
                                              plan.partition, plan.df_partials)
        await asyncio.gather(*futures)

    async def _durable_transaction(self, plans: list[FlushPlan], offsets: dict[Any, int]) -> None:
        """Exactly-once (Apache Kafka): outputs, changelog, df partials and the input
        offsets commit atomically; RocksDB is written after the transaction commits
        (a crash before that is caught up from the committed changelog)."""
        async with self._producer.transaction():
            await self._send_outputs(plans)
            sent = await self._send_changelog(plans)
            for plan in plans:
                if plan.df_partials:
                    await send_records(self._producer, self.t("df-partials"), plan.partition,
                                       plan.df_partials)
            if offsets:
                await self._producer.send_offsets_to_transaction(
                    offsets, self.t("mekb-streams"))
        for p, futures in sent.items():
            metas = [f.result() for f in futures]
            plan = next(pl for pl in plans if pl.partition == p)
            self._write_local(plan, _changelog_next(metas))

    def _observe(self, plans: list[FlushPlan], consumer: Any, topic: str,
                 started: float) -> None:
        from aiokafka import TopicPartition

        now = time.time()
        m = self.metrics
        parked = 0
        for plan in plans:
            for outcome, n in plan.outcomes.items():
                m.events.labels("mekb", outcome).inc(n)
            for reason, n in plan.dead_letters.items():
                m.dead_letters.labels("mekb", reason).inc(n)
            for ts in plan.event_times:
                m.latency.observe(max(0.0, now - ts))
            for size in plan.mekb_sizes:
                m.mekb_size.observe(size)
            part = self.partitions.get(plan.partition)
            if part is not None:
                parked += part.parked_count
                if plan.next_offset is not None:
                    self.health.applied[plan.partition] = (part.input_id, plan.next_offset)
            if plan.next_offset is not None:
                tp = TopicPartition(topic, plan.partition)
                high = consumer.highwater(tp)
                if high is not None:
                    m.lag.labels("mekb", str(plan.partition)).set(
                        max(0, high - plan.next_offset))
        m.parked.set(parked)
        if any(not pl.empty or pl.next_offset is not None for pl in plans):
            m.batch_seconds.labels("mekb").observe(time.perf_counter() - started)
            self.health.batches += 1
            self.health.last_batch_at = now

    # --- rebalancing -------------------------------------------------------
    async def assign(self, partitions: list[int]) -> dict[int, int]:
        """Restore newly assigned partitions; returns, for each, the input offset the
        consumer must read from: the state's own position (`applied_next`, durable with
        the state; 0 on a rebased, new interactions topic).

        Never the group's committed offset: it can be ahead of the state. After a broker
        restart the consumer, still holding the old assignment, resets to the new topic's
        start, the old state skips those records as already applied (their offsets are
        below its position) and commits past them; read from there, they would be lost
        (tests/integration/test_restart_incarnation.py)."""
        positions: dict[int, int] = {}
        async with self._lock:
            new = [p for p in partitions if p not in self.partitions]
            if new:
                names = [self.t(n) for n in ("interactions", "mekb-changelog", "mekb-updates")]
                ids = await asyncio.to_thread(topic_ids, self.settings, names)
                for p in new:
                    await self._restore(p, ids)
                    positions[p] = self.partitions[p].applied_next
            self._sync_health()
        return positions

    async def revoke(self, partitions: list[int]) -> None:
        # The lock waits for a batch being processed, the drain for the batch being
        # made durable and committed: nothing is pending when a partition leaves.
        async with self._lock:
            await self._drain()
            for p in partitions:
                self.partitions.pop(p, None)
            self._sync_health()

    def _sync_health(self) -> None:
        self.health.partitions = sorted(self.partitions)
        # A partition just restored counts from its durable state (rebased to the
        # current topic if that is new); one revoked is applied by whoever takes it.
        self.health.applied = {
            p: self.health.applied.get(p, (part.input_id, part.applied_next))
            for p, part in self.partitions.items()}
        self.metrics.partitions.labels("mekb").set(len(self.partitions))

    async def _restore(self, p: int, ids: dict[str, str]) -> None:
        """Catch the local state of partition p up with the changelog: from the local
        position (0 if RocksDB was lost) to a marker appended now. Offsets stored under
        another topic id than the topic's now (mekb/topics.py) are rebased: see
        `_catch_up` and `_rebase`."""
        started = time.perf_counter()
        part = MeKBPartition(p, self.store, self.config, self.catalog, self.dftable,
                             self._n_partitions)
        part.load()
        n, new_changelog = await self._catch_up(part, ids.get(self.t("mekb-changelog")))
        part.load()
        await self._rebase(part, ids, new_changelog)
        self.partitions[p] = part
        # Re-publish every df partial of p: whatever a crash kept from being published
        # (and everything, into a new df-partials topic).
        await asyncio.gather(*await send_records(
            self._producer, self.t("df-partials"), p, part.df_snapshot()))
        elapsed = time.perf_counter() - started
        self.metrics.restore_seconds.observe(elapsed)
        logger.info("partition %d ready: %d changelog records applied in %.2fs "
                    "(users' df entries %d, n_p %d, parked %d)", p, n, elapsed,
                    len(part.df_p), part.n_p, part.parked_count)

    async def _catch_up(self, part: MeKBPartition, topic_id: str | None) -> tuple[int, bool]:
        """Apply the changelog records the store lacks. A changelog that is another topic
        than the one the store's position counts in (another id, or a position beyond its
        end: a broker without topic ids) replaces the store only if a worker seeded it
        completely from a state at least as new (a SEEDED record with a sequence number
        >= the store's: another worker owned p since); otherwise the store is what
        survived and seeds it (`_rebase`), over whatever batches reached the new topic
        before the change was noticed (the store holds them too). Returns the records
        applied and whether the changelog is a new topic."""
        p = part.partition
        topic = self.t("mekb-changelog")
        prefix = store_prefix(p)
        end = await write_marker(self._producer, topic, p)
        new = rebase_needed(part.changelog_id, topic_id) or part.changelog_next > end + 1
        n = 0
        if not new:
            if part.changelog_next < end:
                n = await read_until(self._restorer, topic, p, part.changelog_next, end,
                                     lambda recs: self.store.write(
                                         {prefix + r.key: r.value for r in recs}))
        else:
            seeded = -1

            def inspect(records: list[Any]) -> None:
                nonlocal seeded
                for r in records:
                    if r.key == SEEDED and r.value:
                        seeded = max(seeded, int(loads(r.value)["seq"]))

            await read_until(self._restorer, topic, p, 0, end, inspect)
            if seeded >= part.seq and seeded >= 0:
                # (a crash from here on leaves no LOCAL: the next start restores from 0)
                self.store.write({k: None for k, _ in list(self.store.scan(prefix))})
                n = await read_until(self._restorer, topic, p, 0, end, lambda recs:
                                     self.store.write({prefix + r.key: r.value for r in recs}))
            logger.warning("partition %d: mekb-changelog is a new topic (id %s, was %s): %s",
                           p, topic_id, part.changelog_id,
                           f"restored from its {n} records (seeded by another worker)" if n
                           else "seeding it from the local state")
            part.seeding = not n
        if topic_id is not None:
            part.changelog_id = topic_id
        self.store.write({prefix + LOCAL: part.local_value(end + 1)})
        return n, new

    async def _rebase(self, part: MeKBPartition, ids: dict[str, str], new_changelog: bool) -> None:
        """Make the topics agree with the state after some of them were re-created (or the
        embedded broker restarted): rebase the input offsets to a new interactions topic,
        seed a new changelog from the store, publish every user's MeKB to a new
        mekb-updates topic. Each step is recorded only once it is durable, so a crash in
        between repeats it (every record holds absolute values)."""
        p = part.partition
        prefix = store_prefix(p)
        input_id = ids.get(self.t("interactions"))
        changes: dict[bytes, bytes | None] = {}
        rebased = rebase_needed(part.input_id, input_id) or (input_id is None and new_changelog)
        if rebased:
            logger.warning("partition %d: interactions is a new topic (id %s, was %s): "
                           "input offsets rebased from %d to 0, state kept", p, input_id,
                           part.input_id, part.applied_next)
            changes = part.rebase_input(input_id)
        elif part.input_id is None and input_id is not None:
            part.input_id = input_id  # state from before ids were recorded: adopt it
            changes = {META: part.meta_value()}
        if part.seeding or changes:
            records = changes
            if part.seeding:
                # the whole state, then the record saying it is complete
                records = {**await asyncio.to_thread(part.state_records), **changes,
                           SEEDED: dumps({"seq": part.seq})}
            async with self._transaction():
                futures = await send_records(self._producer, self.t("mekb-changelog"), p,
                                             list(records.items()))
                metas = await asyncio.gather(*futures)
            if part.seeding:
                logger.info("partition %d: mekb-changelog seeded with %d records", p,
                            len(records))
            part.seeding = False
            self.store.write({**{prefix + k: v for k, v in changes.items()},
                              prefix + LOCAL: part.local_value(_changelog_next(metas))})
        updates_id = ids.get(self.t("mekb-updates"))
        if updates_id is not None and updates_id != part.updates_id:
            # A new mekb-updates topic (or none published under an id yet): every MeKB
            # of p, so that a serving replica built from the topic has every user.
            updates = await asyncio.to_thread(part.all_updates, time.time())
            async with self._transaction():
                await asyncio.gather(*await send_records(
                    self._producer, self.t("mekb-updates"), p, updates))
            part.updates_id = updates_id
            self.store.write({prefix + LOCAL: part.local_value(part.changelog_next)})
            if updates:
                logger.info("partition %d: %d MeKBs published to mekb-updates (id %s)", p,
                            len(updates), updates_id)

    def _transaction(self) -> Any:
        """Sends outside a batch: in a transaction where the producer is transactional."""
        if self.settings.exactly_once:
            return self._producer.transaction()
        return contextlib.nullcontext()


async def _relay(outer: asyncio.Event, inner: asyncio.Event) -> None:
    await outer.wait()
    inner.set()


def _changelog_next(metas: list[Any]) -> int:
    """Where a restore must resume reading the changelog after this flush. The produce
    response names each record batch's base offset only, so this is the last batch's
    base + 1: a restore may re-read the rest of that batch, which is harmless (the
    records hold absolute values that the local state already has)."""
    return int(metas[-1].offset) + 1


async def _commit(consumer: Any, offsets: dict[Any, int]) -> None:
    if not offsets:
        return
    from aiokafka.errors import CommitFailedError, IllegalStateError

    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        # A rebalance took the partition: its state is durable, the next owner replays
        # from the older offset and the dedupe window drops what is already applied.
        logger.info("offset commit skipped (%s)", exc)


def _listener(worker: StreamWorker, consumer: Any) -> Any:
    """An aiokafka ConsumerRebalanceListener that hands partitions to the worker."""
    from aiokafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await worker.revoke([tp.partition for tp in revoked])

        async def on_partitions_assigned(self, assigned: Any) -> None:
            positions = await worker.assign([tp.partition for tp in assigned])
            for tp in assigned:
                if tp.partition in positions:
                    # (a retention-trimmed start resets to the earliest offset)
                    consumer.seek(tp, positions[tp.partition])

    return Listener()


def health_json(worker: StreamWorker) -> tuple[int, bytes]:
    h = worker.health
    body = dumps({"status": "ok" if h.ready else "starting", "partitions": h.partitions,
                  "batches": h.batches, "items": len(worker.catalog),
                  "users": worker.dftable.n_users,
                  "applied": {str(p): {"topic_id": tid, "next_offset": n}
                              for p, (tid, n) in sorted(h.applied.items())}})
    return (200 if h.ready else 503), body


HealthFn = Callable[[], tuple[int, bytes]]
