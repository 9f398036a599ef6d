"""The stream agents as faust-streaming agents, in a platform's own `faust.App`.

    app = faust.App("my-platform", broker="kafka://...")
    agents = streams.faust_app.install(app, Settings())  # item and MeKB agents
    # `faust -A my_platform worker`, or `mekb worker --runtime faust`

Faust consumes `items` and `interactions` in the app's consumer group (its assignor,
its rebalances, its offset commits); everything else is the default worker's code,
not a copy of it: each batch of `stream.noack_take()` goes through
`StreamWorker._step` (the partition core of streams/partition.py, pipelined), which
makes it durable in the documented order (outputs, changelog, RocksDB, df partials)
and only then "commits" it, here by acking the batch's events: Faust commits acked
offsets only, so a committed offset never passes what is durable, a batch that failed
is never acked, and a SIGKILL anywhere replays from the last commit, which the
partition core's stored input offsets and event_id window drop (exact state). A
rebalance restores newly assigned partitions from `mekb-changelog` inside Faust's
`on_partitions_assigned` (before they are processed); Faust calls
`on_partitions_revoked` only after every event handed to the agents was acked, so
no batch is in flight when a partition leaves.

State lives in the partition core's own RocksDB (rocksdict), not in Faust Tables,
although faust-streaming 0.15 runs Tables on rocksdict (`store="rocksdb://"`, which
falls back to rocksdict without python-rocksdb): a Faust Table writes each key on
its own (`table[k] = v` under `current_event()`'s partition) and sends a changelog
record per key in the background, while the core's exactness rests on one atomic
WriteBatch per batch holding the users, df_p and the consumed input offset, a
changelog made durable before the offsets are committed, and a restore read to a
marker (Faust recovers to ListOffsets LATEST, which the embedded Tansu broker
answers wrongly for multi-record batches, see mekb/kafka_config.py). The store is
the worker's: same layout, same `mekb-changelog`, so a worker can switch runtimes on
its RocksDB. The item and df tables are the worker's in-memory replicas.

Limits of this runtime: at-least-once only (MEKB_EXACTLY_ONCE needs the default
worker's transactions); topics re-created under a running worker stop it instead of
restarting its agents in place; throughput is Faust's (bench/bench_streams.py
measures both runtimes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from linker.base import Linker
from mekb.kafka_config import aiokafka_config
from mekb.settings import Settings
from streams.kafka_io import FETCH, Replica, producer_kwargs
from streams.metrics import StreamMetrics
from streams.partition import InRecord
from streams.state.base import StateStore
from streams.worker import StreamWorker, health_json

logger = logging.getLogger(__name__)

ITEM_BATCH_MAX = 2000  # as the default worker's item agent
TAKE_WITHIN_S = 0.2


class FaustWorker(StreamWorker):
    """The default worker's state, tables and batch path, with its Kafka clients
    started and stopped by the Faust app instead of `StreamWorker.run`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop = asyncio.Event()
        self._replicas: list[asyncio.Task[None]] = []
        self._tables_ready: asyncio.Future[Any] | None = None

    async def start_clients(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        self._producer = AIOKafkaProducer(**producer_kwargs(self.settings))
        await self._producer.start()
        self._restorer = AIOKafkaConsumer(**aiokafka_config(self.settings), group_id=None,
                                          enable_auto_commit=False, **FETCH)
        await self._restorer.start()
        await self._check_partitions()
        replicas = [Replica(self.settings, self.t("item-entities"), self._apply_items),
                    Replica(self.settings, self.t("df-partials"), self._apply_df)]
        self._replicas = [asyncio.create_task(r.run(self._producer, self._stop),
                                              name=f"replica-{r.topic}") for r in replicas]
        for task in self._replicas:
            task.add_done_callback(self._replica_done)
        self._tables_ready = asyncio.ensure_future(
            asyncio.gather(*(r.ready.wait() for r in replicas)))

    async def tables_ready(self) -> None:
        """The item and df tables hold everything written before start-up (a replica
        that failed raises here)."""
        assert self._tables_ready is not None
        done, _ = await asyncio.wait([self._tables_ready, *self._replicas],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not self._tables_ready and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await self._tables_ready

    def _replica_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The tables stop moving: not ready (the default worker stops its agents).
            self.health.ready = False
            self.health.error = f"{task.get_name()}: {task.exception()!r}"
            logger.error("%s failed: %r", task.get_name(), task.exception())

    async def stop_clients(self) -> None:
        self._stop.set()
        for task in self._replicas:
            try:
                await asyncio.wait_for(task, 15)
            except Exception as exc:  # noqa: BLE001 - shutting down; log and go on
                logger.warning("%s ended with %r", task.get_name(), exc)
        if self._tables_ready is not None:
            self._tables_ready.cancel()
        try:
            await self._drain()  # (nothing is in flight after Faust's wait_empty)
        except Exception as exc:  # noqa: BLE001 - its events were not acked: replayed
            logger.warning("the last batch was not made durable: %r", exc)
        if self._restorer is not None:
            await self._restorer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def link(self, events: list[Any], consumer: Any) -> None:
        """The item agent's batch: as `StreamWorker._item_agent`, for Faust events of
        `consumer` (the app's)."""
        started = time.perf_counter()
        by_tp: dict[Any, list[Any]] = defaultdict(list)
        for event in events:
            by_tp[event.message.tp].append(event.message)
        futures = []
        for tp, msgs in by_tp.items():
            sent, next_offset = await self._link_partition(
                tp.partition, [InRecord(m.offset, m.key, m.value, "items") for m in msgs])
            futures += sent
            if next_offset is not None:
                high = _highwater(consumer, tp)
                if high is not None:
                    self.metrics.lag.labels("items", str(tp.partition)).set(
                        max(0, high - next_offset))
        await asyncio.gather(*futures)
        self.metrics.batch_seconds.labels("items").observe(time.perf_counter() - started)


class _Acks:
    """What `StreamWorker._step` commits through: acks the events of each partition
    below the committed offset (Faust commits acked offsets), and answers the lag
    metric's high watermarks."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.stream: Any = None
        self.pending: dict[Any, deque[Any]] = defaultdict(deque)

    def hold(self, events: list[Any]) -> None:
        for event in events:
            self.pending[event.message.tp].append(event)

    async def commit(self, offsets: dict[Any, int]) -> None:
        for tp, next_offset in offsets.items():
            pending = self.pending[tp]
            while pending and pending[0].message.offset < next_offset:
                await self.stream.ack(pending.popleft())

    def highwater(self, tp: Any) -> int | None:
        return _highwater(self.app.consumer, tp)


def _highwater(consumer: Any, tp: Any) -> int | None:
    try:
        return int(consumer.highwater(tp))
    except Exception:  # noqa: BLE001 - not assigned (any more) or not known yet: no figure
        return None


class MeKBAgents:
    """The item and MeKB agents installed into a Faust app (`install`)."""

    def __init__(self, app: Any, settings: Settings, worker: FaustWorker,
                 owned: list[Any]) -> None:
        self.app = app
        self.settings = settings
        self.worker = worker
        self.topic = settings.topic("interactions")
        self._owned = owned  # store and linker made by `install`: closed at shutdown
        self._start_lock = asyncio.Lock()
        self._started = False
        self._acks = _Acks(app)

    def health(self) -> tuple[int, bytes]:
        """(HTTP status, JSON body) of the agents, as the default worker's /healthz."""
        return health_json(self.worker)

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.worker.start_clients()
                self._started = True

    # --- rebalancing (Faust signals) -----------------------------------------
    async def _assign(self, tps: list[Any]) -> None:
        await self._ensure_started()
        await self.worker.tables_ready()  # a new mekb-updates topic is seeded with scores
        positions = await self.worker.assign([tp.partition for tp in tps])
        for tp in tps:
            if tp.partition in positions:
                # the state's own position, never the group's offset (StreamWorker.assign)
                await self.app.consumer.seek(tp, positions[tp.partition])

    async def on_partitions_assigned(self, sender: Any, assigned: set[Any],
                                     **_: Any) -> None:
        await self._assign(sorted(tp for tp in assigned if tp.topic == self.topic))

    async def on_partitions_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        await self.worker.revoke([tp.partition for tp in revoked if tp.topic == self.topic])

    async def on_before_shutdown(self, sender: Any = None, **_: Any) -> None:
        self.worker.health.ready = False
        if self._started:
            await self.worker.stop_clients()
        for resource in self._owned:
            resource.close()
        self._owned = []

    # --- agents ----------------------------------------------------------------
    async def item_agent(self, stream: Any) -> None:
        await self._ensure_started()
        try:
            async for events in stream.noack_take(ITEM_BATCH_MAX, within=TAKE_WITHIN_S):
                # Acked once the linked entities are durable (at-least-once; re-linking
                # an item is idempotent: the compacted table keeps the latest).
                await asyncio.shield(self.worker.link(events, self.app.consumer))
                for event in events:
                    await stream.ack(event)
        except Exception as exc:
            await self._crash("item agent", exc)

    async def mekb_agent(self, stream: Any) -> None:
        await self._ensure_started()
        await self.worker.tables_ready()
        self._acks.stream = stream
        self.worker.health.ready = True
        # noack_take() collects the next batch only while the agent's body is not
        # running: the body hands each batch to a task of its own and goes on.
        queue: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=1)
        batches = asyncio.create_task(self._batches(stream, queue), name="mekb-batches")
        try:
            async for events in stream.noack_take(self.settings.worker_batch_max,
                                                  within=TAKE_WITHIN_S):
                put = asyncio.ensure_future(queue.put(events))
                await asyncio.wait([put, batches], return_when=asyncio.FIRST_COMPLETED)
                if batches.done():  # it failed and crashed the app
                    put.cancel()
                    return
        finally:
            batches.cancel()

    async def _crash(self, agent: str, exc: Exception) -> None:
        """Crash the app, as the default worker's process stops: the partitions' state
        in memory may be ahead of what is durable, and Faust would restart the agent
        in this process over it. Nothing of the failed batch was acked: the restarted
        process replays it (the worker exits 1)."""
        self.worker.health.ready = False
        self.worker.health.error = f"{agent}: {exc!r}"
        logger.error("%s failed: %r", agent, exc)
        await self.app.crash(exc)

    async def _batches(self, stream: Any, queue: asyncio.Queue[list[Any]]) -> None:
        """Process the agent's batches in order. Shielded: a cancelled task must not
        leave a batch processed in memory but never made durable. While no records
        come in and interactions are parked, empty batches (the default worker runs
        one per empty poll) let an item that arrives later unpark its interactions,
        and parked ones expire."""
        get: asyncio.Future[list[Any]] | None = None
        try:
            while True:
                get = get or asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait([get], timeout=TAKE_WITHIN_S)
                if done:
                    events, get = get.result(), None
                    await asyncio.shield(self._batch(stream, events))
                elif any(p.parked_count for p in self.worker.partitions.values()):
                    await asyncio.shield(self.worker._step({}, self._acks, self.topic))
        except Exception as exc:
            await self._crash("MeKB agent", exc)

    async def _batch(self, stream: Any, events: list[Any]) -> None:
        got: dict[Any, list[Any]] = defaultdict(list)
        for event in events:
            got[event.message.tp].append(event.message)
        assignment = self.app.consumer.assignment()
        for tp in list(got):
            if tp.partition in self.worker.partitions:
                continue
            if tp in assignment:  # fetched before on_partitions_assigned restored it
                await self._assign([tp])
            else:  # revoked meanwhile: the new owner replays it from the committed offset
                for msg_event in [e for e in events if e.message.tp == tp]:
                    await stream.ack(msg_event)
                del got[tp]
        self._acks.hold([e for e in events if e.message.tp in got])
        await self.worker._step(got, self._acks, self.topic)


def install(
    app: Any, settings: Settings, *, metrics: StreamMetrics | None = None,
    linker: Linker | None = None, store: StateStore | None = None,
) -> MeKBAgents:
    """Install the item agent and the MeKB agent into `app` (a `faust.App`), reading
    `settings.topic("items")` and `settings.topic("interactions")` in the app's
    consumer group, with state in RocksDB under `$MEKB_DATA_DIR/streams/<worker_id>`
    (or `store`). Metrics go to `metrics` (a registry of the caller's; a private one if
    None); a linker and a store made here are closed when the app shuts down.
    Returns the agents' handle (`.worker`: state, tables and health)."""
    from prometheus_client import CollectorRegistry

    if settings.exactly_once:
        raise ValueError("the Faust runtime is at-least-once (state stays exact); "
                         "MEKB_EXACTLY_ONCE needs the default worker's transactions")
    owned: list[Any] = []
    if linker is None:
        from linker.factory import build_linker

        linker = build_linker(settings)
        owned.append(linker)
    if store is None:
        from streams.state.rocksdb import RocksDBStore

        store = RocksDBStore(settings.data_dir / "streams" / settings.worker_id)
        owned.insert(0, store)
    worker = FaustWorker(settings, store, linker,
                         metrics or StreamMetrics(CollectorRegistry()))
    agents = MeKBAgents(app, settings, worker, owned)
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    app.agent(app.topic(settings.topic("items"), **raw), name="mekb-items")(agents.item_agent)
    app.agent(app.topic(settings.topic("interactions"), **raw),
              name="mekb-interactions")(agents.mekb_agent)
    app.on_partitions_assigned.connect(agents.on_partitions_assigned)
    app.on_partitions_revoked.connect(agents.on_partitions_revoked)
    app.on_before_shutdown.connect(agents.on_before_shutdown)
    return agents


def build_app(settings: Settings, datadir: Path | None = None) -> Any:
    """A Faust app of its own for `mekb worker --runtime faust` (group
    `<prefix>mekb-faust`, no web server: the worker serves /metrics itself)."""
    import faust

    from mekb.kafka_config import faust_config

    datadir = datadir or settings.data_dir / "faust" / settings.worker_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust makes the last level only
    return faust.App(
        settings.topic("mekb-faust"), **faust_config(settings), web_enabled=False,
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest", topic_disable_leader=True,
        stream_buffer_maxsize=max(4096, settings.worker_batch_max),
    )


def run(app: Any, settings: Settings) -> None:
    """Run `app` as a Faust worker until SIGTERM/SIGINT (exits the process)."""
    import faust

    faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True,
                 redirect_stdouts=False).execute_from_commandline()
