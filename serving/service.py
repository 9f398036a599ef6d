"""The embedding service: replica + cache + batcher + refresher around the active model.

Freshness rule: a user's embedding is served from the cache only when it was
computed for the user's latest applied MeKB version (the replica's) by the active
user tower; otherwise it is computed on demand (dynamic batching with the other
misses). `allow_stale=True` lets a caller take an older cached embedding instead,
and the response says `stale: true`. So from the moment an update is applied to
the replica, every request reflects it: that is the processing lag measured (the
worker's `updated_at` -> applied; the event-time age, `ts` -> applied, is reported
apart: a replay of old events is not stale service). The refresher additionally
precomputes updated users in micro-batches within the device's capacity, so most
requests are cache hits.

Version consistency: a request reads `self.model` once and uses that object for the
user embedding and the items; `activate()` replaces the reference in one assignment.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.batcher import DynamicBatcher, Priority, observe_many
from serving.cache import CachedEmbedding, EmbeddingCache
from serving.metrics import ServingMetrics
from serving.model import LoadedModel
from serving.replica import ApplyResult, Replica, UserRecord

logger = logging.getLogger(__name__)

# Users kept waiting for the refresher; beyond this the oldest are left to on-demand.
MAX_PENDING = 200_000
# After a swap to another user tower, this many recently used users are re-encoded first.
REWARM_USERS = 1_000
# Pending users whose applied record is kept for the refresher (no second read and
# decode): over 3 s (refresh_max_lag_s is 2) of the 5 000 updates/s target. Beyond it
# (a backlog: a burst, a replica catching up, no model yet) they are read back from the
# replica, so memory stays bounded (~7.5 KB per decoded 32-entity record: ~120 MB).
HOLD_RECORDS = 16_000
# Cyclic GC thresholds of the serving process (gen 0, 1, 2): see tune_gc.
GC_THRESHOLD = (100_000, 10, 10)
# Refresh batches in flight at once (formed on the event loop, run one at a time).
REFRESH_IN_FLIGHT = 2
# Records a background batch (refresh, pre-warm) reads from the replica per event-loop
# slice: ~1 ms, so a cache hit never waits behind more.
READ_SLICE = 64

Key = tuple[str, int, str]  # (user, MeKB version, tower)


@dataclass(frozen=True)
class UserEmbedding:
    user_id: str
    embedding: np.ndarray
    model_version: str
    mekb_version: int
    mekb_ts: float | None
    computed_at: float
    cold_start: bool
    stale: bool
    cached: bool


def tune_gc() -> None:
    """Fewer cyclic-GC passes in the serving process. Every mekb-updates record decodes
    into dozens of new containers (acyclic JSON), so the default threshold (a
    collection every 700 allocations) runs thousands of collections per second at
    EntityGraph's refresh rates, each holding the GIL against the encoder thread:
    ~20 % of the CPU and up to half the refresh throughput (docs/benchmarks.md, issue
    16). Collections still run, every GC_THRESHOLD allocations."""
    if gc.get_threshold()[0] < GC_THRESHOLD[0]:
        gc.set_threshold(*GC_THRESHOLD)


def _encode(model: Any, inputs: list[Any]) -> tuple[np.ndarray, float]:
    out: tuple[np.ndarray, float] = model.encode(inputs)
    return out


class EmbeddingService:
    def __init__(
        self,
        replica: Replica,
        metrics: ServingMetrics,
        *,
        cache_users: int = 100_000,
        batch_max: int = 32,
        batch_wait_s: float = 0.0,
        refresh_batch: int = 8,
        refresh_max_lag_s: float = 2.0,
    ) -> None:
        self.replica = replica
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self.cache = EmbeddingCache(cache_users)
        self.batcher = DynamicBatcher(
            _encode, metrics, max_batch=batch_max, refresh_batch=refresh_batch,
            wait_s=batch_wait_s,
        )
        self.refresh_batch = refresh_batch
        self.refresh_max_lag_s = refresh_max_lag_s
        self.replica_caught_up = False
        # A broker feeds the replica (False: tests and `build(kafka=False)`, where no
        # follower runs, so the replica cannot fall behind one).
        self.follows_upstream = False
        # Wall time of the last fetch response from the broker (set by the replica
        # follower); older than upstream_timeout_s = upstream unreachable.
        self.upstream_seen_at: float | None = None
        self.upstream_timeout_s = 5.0
        self._inflight: dict[Key, tuple[asyncio.Task[np.ndarray], int]] = {}
        # user -> (enqueued (monotonic), the record just applied: the refresher need not
        # read and decode it again; None: read it from the replica)
        self._pending: OrderedDict[str, tuple[float, UserRecord | None]] = OrderedDict()
        self._pending_event: asyncio.Event | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._capacity = 0.0
        self._refreshed_at = 0.0  # perf_counter of the last refresh batch's completion

    # --- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        tune_gc()
        self._pending_event = asyncio.Event()
        self.batcher.start()
        self._refresher = asyncio.get_running_loop().create_task(
            self._refresh_loop(), name="refresher"
        )

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        await self.batcher.close()

    @property
    def replica_stale(self) -> bool:
        """True while the broker has not answered the replica's fetches recently: the
        replica (and so every embedding) may miss the latest updates."""
        if not self.follows_upstream:
            return False
        seen = self.upstream_seen_at
        return seen is None or time.time() - seen > self.upstream_timeout_s

    @property
    def can_serve(self) -> bool:
        """A model version is loaded and the replica has caught up once."""
        return self.model is not None and self.replica_caught_up

    @property
    def ready(self) -> bool:
        """`can_serve` and the replica is fresh: what /readyz and mekb_serving_ready say."""
        return self.can_serve and not self.replica_stale

    # --- model swap --------------------------------------------------------------------
    def activate(self, model: LoadedModel) -> LoadedModel | None:
        """Make a loaded, warmed model the active one (one reference assignment)."""
        previous, self.model = self.model, model
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(version=model.version, kind=model.kind,
                                       model_kind=model.model_kind,
                                       provider=model.provider).set(1)
        self.metrics.model_swaps.inc()
        if previous is None or previous.tower != model.tower:
            # The cached embeddings belong to the old tower: re-encode the recent users
            # that the pre-warm did not reach (skipped by the refresher if cached).
            self._enqueue((user, None) for user in self.cache.recent_users(REWARM_USERS))
        logger.info("active model %s (was %s)", model.version,
                    previous.version if previous else None)
        return previous

    async def prewarm(self, model: LoadedModel, budget_s: float,
                      max_users: int = REWARM_USERS) -> int:
        """Before a switch to another user tower: encode the most recently used users with
        the NEW model (refresh priority: requests on the old model go first) for at most
        `budget_s`, so the first requests after the swap are cache hits. Returns users done."""
        current = self.model
        if budget_s <= 0 or current is None or current.tower == model.tower:
            return 0
        deadline = time.monotonic() + budget_s
        users = self.cache.recent_users(max_users)
        done = 0
        step = max(self.refresh_batch, model.batch_max)
        for start in range(0, len(users), step):
            if time.monotonic() >= deadline:
                break
            batch: dict[Key, tuple[UserRecord, list[int]]] = {}
            chunk = users[start:start + step]
            for user_id, rec in zip(chunk, await self._records(chunk), strict=True):
                if rec is not None and self.cache.get(user_id, rec.version, model.tower) is None:
                    batch[(user_id, rec.version, model.tower)] = (rec, [])
            if batch:
                await self._compute_shared(model, batch, "refresh")
                done += len(batch)
        logger.info("pre-warmed %d users for %s", done, model.version)
        return done

    # --- replica updates -----------------------------------------------------------
    def on_applied(self, result: ApplyResult) -> None:
        """Called after a batch of mekb-updates is applied to the replica."""
        now = time.time()
        m = self.metrics
        if result.older:
            m.replica_records.labels("older").inc(result.older)
        if result.bad:
            m.replica_records.labels("bad").inc(result.bad)
        if result.applied:
            m.replica_records.labels("applied").inc(len(result.applied))
            updated = np.fromiter((r.updated_at for r in result.applied), dtype=np.float64,
                                  count=len(result.applied))
            ts = np.fromiter((r.ts for r in result.applied), dtype=np.float64,
                             count=len(result.applied))
            # clamped: the worker's clock may run ahead of ours; 0 = not set
            observe_many(m.processing_lag, np.maximum(0.0, now - updated[updated > 0]))
            observe_many(m.event_age, np.maximum(0.0, now - ts[ts > 0]))
        self._enqueue((r.user_id, r) for r in result.applied)
        for user in result.deleted:  # nothing to precompute (nor to hold) for them
            self._pending.pop(user, None)
            self.cache.forget(user)  # its next MeKB starts again at version 0

    def _enqueue(self, users: Iterable[tuple[str, UserRecord | None]]) -> None:
        now = time.monotonic()
        for user, rec in users:
            if user in self._pending:
                self.metrics.refresh.labels("coalesced").inc()
                del self._pending[user]
            self._pending[user] = (now, rec if len(self._pending) < HOLD_RECORDS else None)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
            self.metrics.refresh.labels("deferred").inc()
        self.metrics.refresh_pending.set(len(self._pending))
        if self._pending and self._pending_event is not None:
            self._pending_event.set()

    # --- lookups -----------------------------------------------------------------------
    def record(self, user_id: str) -> UserRecord | None:
        return self.replica.get(user_id)

    async def _records(self, users: list[str]) -> list[UserRecord | None]:
        """The replica's records of `users` for a background batch, READ_SLICE at a time
        with the event loop free in between: a read and decode costs ~10 µs, so reading
        a whole 512-user batch at once would hold up the requests behind it ~5 ms."""
        out: list[UserRecord | None] = []
        for lo in range(0, len(users), READ_SLICE):
            if lo:
                await asyncio.sleep(0)
            out.extend(self.replica.get_many(users[lo:lo + READ_SLICE]))
        return out

    async def embed(
        self, model: LoadedModel, user_ids: list[str], *, allow_stale: bool = False
    ) -> list[UserEmbedding]:
        """Embeddings of `user_ids` by `model` (the caller pinned it), in order."""
        out: list[UserEmbedding | None] = [None] * len(user_ids)
        wanted: dict[Key, tuple[UserRecord, list[int]]] = {}
        lookups = self.metrics.cache_lookups
        for n, user_id in enumerate(user_ids):
            rec = self.replica.get(user_id)
            if rec is None:
                lookups.labels("cold").inc()
                out[n] = UserEmbedding(user_id, model.cold_embedding, model.version, 0, None,
                                       model.loaded_at, True, False, True)
                continue
            hit = self.cache.get(user_id, rec.version, model.tower)
            if hit is None and allow_stale:
                old = self.cache.get_any(user_id, model.tower)
                if old is not None:
                    lookups.labels("stale").inc()
                    out[n] = UserEmbedding(user_id, old.embedding, model.version,
                                           old.mekb_version, None, old.computed_at, False,
                                           True, True)
                    continue
            if hit is not None:
                lookups.labels("hit").inc()
                out[n] = UserEmbedding(user_id, hit.embedding, model.version, rec.version,
                                       rec.ts, hit.computed_at, False, False, True)
                continue
            lookups.labels("miss").inc()
            key = (user_id, rec.version, model.tower)
            wanted.setdefault(key, (rec, []))[1].append(n)
        if wanted:
            computed = await self._compute_shared(model, wanted, "request")
            for key, (rec, positions) in wanted.items():
                emb, at = computed[key]
                for n in positions:
                    out[n] = UserEmbedding(rec.user_id, emb, model.version, rec.version,
                                           rec.ts, at, False, False, False)
        self.metrics.cache_users.set(len(self.cache))
        return [o for o in out if o is not None]

    async def _compute_shared(
        self, model: LoadedModel, wanted: dict[Key, tuple[UserRecord, list[int]]],
        priority: Priority,
    ) -> dict[Key, tuple[np.ndarray, float]]:
        """Compute missing keys; a key already being computed is awaited, not recomputed."""
        fresh = [(k, rec) for k, (rec, _) in wanted.items() if k not in self._inflight]
        if fresh:
            task = asyncio.get_running_loop().create_task(self._compute(model, fresh, priority))
            for idx, (key, _) in enumerate(fresh):
                self._inflight[key] = (task, idx)
        tasks = {key: self._inflight[key] for key in wanted}
        distinct = {id(t): t for t, _ in tasks.values()}
        # shield: one client going away must not cancel work other requests wait for
        await asyncio.gather(*(asyncio.shield(t) for t in distinct.values()))
        now = time.time()
        result = {}
        for key, (task, idx) in tasks.items():
            result[key] = (task.result()[idx], now)
        return result

    async def _compute(
        self, model: LoadedModel, keyed: list[tuple[Key, UserRecord]], priority: Priority
    ) -> np.ndarray:
        since = self.cache.epoch  # users erased while this runs are not cached
        try:
            inputs = [model.input_of(rec) for _, rec in keyed]
            embs = await self.batcher.submit(model, inputs, priority)
            now = time.time()
            for n, ((user_id, version, tower), _) in enumerate(keyed):
                self.cache.put(user_id, CachedEmbedding(version, tower, embs[n], now), since)
            return embs
        finally:
            for key, _ in keyed:
                self._inflight.pop(key, None)
            if not self._inflight:
                self.cache.settle()

    # --- background refresher ------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        assert self._pending_event is not None
        # Two batches in flight: the next one is formed and queued while the encoder
        # thread runs the current one, so the thread never waits for the event loop
        # between runs (the batcher still runs them one at a time).
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                if self._pending and len(running) < REFRESH_IN_FLIGHT:
                    model = self.model
                    if model is None:
                        await asyncio.sleep(0.1)
                        continue
                    running.add(asyncio.get_running_loop().create_task(
                        self._refresh_guarded(model)))
                    await asyncio.sleep(0)  # it takes its batch before the next is formed
                    continue
                # nothing to start now: wait for a batch to finish or for new users
                if not self._pending:
                    self._pending_event.clear()
                waits: set[asyncio.Future[Any]] = set(running)
                wake = None
                if len(running) < REFRESH_IN_FLIGHT:
                    wake = asyncio.ensure_future(self._pending_event.wait())
                    waits.add(wake)
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if wake is not None:
                    wake.cancel()
                running.difference_update(done)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _refresh_guarded(self, model: LoadedModel) -> None:
        try:
            await self._refresh_once(model)
        except asyncio.CancelledError:
            raise
        except Exception:  # the refresher must survive anything a batch throws
            logger.exception("refresher batch failed")
            await asyncio.sleep(0.1)

    async def _refresh_once(self, model: LoadedModel) -> None:
        m = self.metrics
        now = time.monotonic()
        batch: dict[Key, tuple[UserRecord, list[int]]] = {}
        # a kind whose tower costs microseconds per user (EntityGraph) refreshes in
        # larger micro-batches: its capacity then stays far above the update rate
        limit = max(self.refresh_batch, model.batch_max)
        taken: list[tuple[str, UserRecord | None]] = []
        while self._pending and len(taken) < limit:
            user_id, (enqueued, held) = self._pending.popitem(last=False)
            if now - enqueued > self.refresh_max_lag_s:
                m.refresh.labels("deferred").inc()  # on-demand keeps it fresh instead
                continue
            taken.append((user_id, held))
        m.refresh_pending.set(len(self._pending))
        unheld = [user for user, held in taken if held is None]
        read = dict(zip(unheld, await self._records(unheld), strict=True)) if unheld else {}
        for user_id, held in taken:
            rec = held if held is not None else read[user_id]
            if rec is None:
                continue
            if self.cache.get(user_id, rec.version, model.tower) is not None:
                m.refresh.labels("skipped").inc()
                continue
            batch[(user_id, rec.version, model.tower)] = (rec, [])
        if not batch:
            return
        start = time.perf_counter()
        await self._compute_shared(model, batch, "refresh")
        end = time.perf_counter()
        # with batches overlapping, a batch's own span includes waiting for the other:
        # capacity is measured from the previous completion when that is later
        elapsed = end - max(start, self._refreshed_at)
        self._refreshed_at = end
        done = time.time()
        updated = np.fromiter((rec.updated_at for rec, _ in batch.values()),
                              dtype=np.float64, count=len(batch))
        observe_many(m.precompute_lag, np.maximum(0.0, done - updated[updated > 0]))
        m.refresh.labels("refreshed").inc(len(batch))
        rate = len(batch) / max(elapsed, 1e-6)
        self._capacity = rate if self._capacity == 0 else 0.8 * self._capacity + 0.2 * rate
        m.refresh_capacity.set(self._capacity)
