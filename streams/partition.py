"""The MeKB agent's batch core for one input partition (pure: no I/O but the local store).

`MeKBPartition.process(records)` turns one batch of `interactions` records into a
`FlushPlan`: state changes (written to the local store and, identically, to the
changelog), output records, and df partials. The worker makes the plan durable in
the order documented in streams/worker.py and only then commits the input offsets.

Per event, in order:
0. offset below the partition's consumed input offset (kept in the changelogged
   partition meta with the id of the interactions topic it counts in, and rebased to 0
   when that topic is a new one: `rebase_input`) -> a replay after a crash:
   `duplicate`, skipped;
1. parse with the event contract; a malformed event or a record whose key is not
   its user_id -> dead letter (reason), processing continues;
2. not positive (see StreamConfig) -> counted `ignored`, no state change;
3. event_id in the user's dedupe window -> `duplicate`;
4. item unknown -> parked (durable, bounded, expires to a dead letter); inline item
   fields are forwarded once to `items` so the item agent links them;
5. with a user TTL: the partition's stream time (the newest event time applied)
   moves to the event's time and every user whose newest event is more than the TTL
   behind it is removed (below);
6. with decay: a newer event decays the user's counts to its time, a late one adds
   its weight decayed to the user's time; entities below `decay_min_k` leave;
7. target domain -> training example from the MeKB *before* this event;
8. k(e) += event weight × entity weight for every entity of the item; the lowest-k
   entities beyond top-M are evicted.
A `delete_user` record (mekb.events.UserDeleteEvent, after steps 0-1) removes the user.
Removing a user (deleted, or expired by the TTL) empties its state at that point of
the batch: mekb-updates gets a tombstone then (and training-examples one, for a
deletion: the trainer drops the user's queued examples), parked events of a deleted
user are dropped, and a later event of the user starts a new MeKB at version 0.
At the end of the batch each touched user is written once (state or changelog
tombstone, mekb-update) and df_p/n_p change by the diff between the user's entity set
before and after the batch, which keeps df exact whatever happened in between.
Every rule above depends on the partition's records in offset order only, never on
wall time or batch boundaries, so a replay or a restore reaches the same state.
"""

from __future__ import annotations

import base64
import gc
import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from mekb.events import EventError, InteractionEvent, UserDeleteEvent
from mekb.scoring import RankMemo, idf, rank
from streams.catalog import ItemCatalog, LinkedItem
from streams.codec import (
    UserState,
    dumps,
    event_hash,
    loads,
    parse_interaction_fast,
    parse_record_fast,
)
from streams.config import StreamConfig
from streams.dftable import NO_PARTIAL, USERS_KEY, DfTable, partial_key, partial_value
from streams.state.base import StateStore

logger = logging.getLogger(__name__)

# Partition-local keys (the changelog carries exactly these; the store prefixes them).
USER = b"u\x00"
DF = b"d\x00"
PARK = b"k\x00"
META = b"m"
LOCAL = b"l"  # local bookkeeping (changelog position), never changelogged
SEEDED = b"s"  # last record of a changelog seeded from a store: {"seq": its META seq}


def store_prefix(partition: int) -> bytes:
    return b"%d/" % partition


# Slotted, not frozen: one of each is made per input record and per output record, and
# a frozen dataclass costs three times as much to build (~0.5 µs vs ~0.15 µs).
@dataclass(slots=True)
class InRecord:
    offset: int
    key: bytes | None
    value: bytes
    topic: str = "interactions"


@dataclass(slots=True)
class Output:
    """A record for partition p of a logical output topic."""

    topic: str  # mekb-updates | training-examples | dead-letters | items
    key: bytes | None
    value: bytes | None  # None: a tombstone (a removed user)


@dataclass
class FlushPlan:
    partition: int
    next_offset: int | None = None
    changes: dict[bytes, bytes | None] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    df_partials: list[tuple[bytes, bytes]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    event_times: list[float] = field(default_factory=list)
    mekb_sizes: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.changes or self.outputs or self.df_partials)


@dataclass
class _Parked:
    user_id: str
    raw: bytes
    at: float
    offset: int

    def encode(self) -> bytes:
        return dumps({"u": self.user_id, "raw": self.raw.decode(), "at": self.at,
                      "off": self.offset})

    @classmethod
    def decode(cls, value: bytes) -> _Parked:
        obj = loads(value)
        return cls(obj["u"], obj["raw"].encode(), float(obj["at"]), int(obj["off"]))


def dead_letter(rec: InRecord, partition: int, reason: str, fld: str, error: str) -> Output:
    value = dumps({
        "v": 1, "source": rec.topic, "partition": partition, "offset": rec.offset,
        "reason": reason, "field": fld, "error": error[:1000],
        "original": base64.b64encode(rec.value).decode("ascii"),
    })
    return Output("dead-letters", rec.key, value)


class _IdfView(dict[str, float]):
    """idf(e) as this partition sees it, memoised while neither the df table (updated
    between batches) nor df_p (updated at the end of a batch) moves: scoring a MeKB
    then costs one dict lookup per entity. df(e) is the global df with this
    partition's own, newer contribution (>= 1 for a held entity). It is kept apart
    (`dfs`) so that the end of a batch, which moves df_p of a few entities and N
    whenever a user came or went, costs a log per entity the mekb-updates score, not
    a df lookup again (`moved`)."""

    def __init__(self, part: MeKBPartition) -> None:
        super().__init__()
        table = part.dftable
        self.partition = part.partition
        self.df, self.partials, self.df_p = table.df, table.partials, part.df_p
        self.n_users = part.n_users()
        self.dfs: dict[str, int] = {}

    def __missing__(self, entity: str) -> float:
        # (one call per entity a batch scores: the lookups are inlined)
        df = self.dfs.get(entity)
        if df is None:
            df = self.dfs[entity] = max(1, self.df.get(entity, 0) + self.df_p.get(entity, 0)
                                        - self.partials.get((self.partition, entity),
                                                            NO_PARTIAL)[1])
        value = self[entity] = idf(df, self.n_users)
        return value

    def moved(self, entities: Iterable[str], n_users: int) -> None:
        """df_p of `entities` changed and N is now `n_users`."""
        for entity in entities:
            self.dfs.pop(entity, None)
            self.pop(entity, None)
        if n_users != self.n_users:
            self.n_users = n_users
            self.clear()


class MeKBPartition:
    """State and batch logic of one `interactions` partition. Rebuilt from the store
    (`load`) — the constructor holds no state of its own."""

    def __init__(
        self, partition: int, store: StateStore, config: StreamConfig,
        catalog: ItemCatalog, dftable: DfTable, n_partitions: int = 1,
    ) -> None:
        self.partition = partition
        self.store = store
        self.config = config
        self.catalog = catalog
        self.dftable = dftable
        self.prefix = store_prefix(partition)
        self.cache_max = max(1, config.cache_users // max(1, n_partitions))
        self.cache: dict[str, UserState] = {}
        self.df_p: dict[str, int] = {}
        self.n_p = 0
        self.seq = 0
        self.applied_next = 0
        self.stream_time = 0.0  # the newest event time applied (META), for the user TTL
        # With a user TTL: every user's newest event time, and a heap over it whose
        # entries that no longer match are skipped (`_sweep`).
        self._last_ts: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._gone: set[str] = set()  # users removed in this batch (and not back since)
        self.changelog_next = 0
        # Topic ids (mekb/topics.py) the stored offsets belong to: `applied_next` to
        # interactions (changelogged in META), `changelog_next` to mekb-changelog and the
        # last full publication of mekb-updates (LOCAL: this store's own bookkeeping).
        self.input_id: str | None = None
        self.changelog_id: str | None = None
        self.updates_id: str | None = None
        self.seeding = False  # the changelog is being seeded from this store
        self.parked: dict[str, dict[str, _Parked]] = {}
        self.parked_count = 0
        self._park_order: deque[tuple[float, str, str]] = deque()
        self._forwarded: set[str] = set()
        self._view: _IdfView | None = None
        # Per user, for one idf view: the ranking of the last training example.
        self._memos: dict[str, RankMemo] = {}

    # --- loading -----------------------------------------------------------
    def load(self) -> None:
        """(Re)build the in-memory view from the local store."""
        self.cache.clear()
        self.df_p = {
            k[len(self.prefix) + len(DF):].decode(): int(v)
            for k, v in self.store.scan(self.prefix + DF)
        }
        meta = self.store.get(self.prefix + META)
        obj = loads(meta) if meta else {}
        self.seq, self.n_p = int(obj.get("seq", 0)), int(obj.get("n", 0))
        self.applied_next = int(obj.get("next", 0))
        self.stream_time = float(obj.get("st", 0.0))
        self.input_id = obj.get("inc")
        self._last_ts.clear()
        if self.config.user_ttl_s:
            # (a scan of every user: the TTL index lives in memory only, so the TTL can
            # be switched on for an existing state)
            plen = len(self.prefix) + len(USER)
            self._last_ts = {k[plen:].decode(): float(loads(v)["ts"])
                             for k, v in self.store.scan(self.prefix + USER)}
        self._expiry = [(ts, u) for u, ts in self._last_ts.items()]
        heapq.heapify(self._expiry)
        local = loads(self.store.get(self.prefix + LOCAL) or b"{}")
        self.changelog_next = int(local.get("changelog_next", 0))
        self.changelog_id = local.get("inc")
        self.updates_id = local.get("updates_inc")
        self.seeding = bool(local.get("seeding"))
        self.parked.clear()
        self._park_order.clear()
        self.parked_count = 0
        entries = []
        for key, value in self.store.scan(self.prefix + PARK):
            item, _, event_id = key[len(self.prefix) + len(PARK):].decode().partition("\x00")
            entries.append((item, event_id, _Parked.decode(value)))
        for item, event_id, parked in sorted(entries, key=lambda x: x[2].at):
            self._park(item, event_id, parked)

    def local_value(self, changelog_next: int) -> bytes:
        """The LOCAL record: changelog position and the topic ids of this store."""
        self.changelog_next = changelog_next
        obj: dict[str, object] = {"changelog_next": changelog_next}
        for name, value in (("inc", self.changelog_id), ("updates_inc", self.updates_id)):
            if value is not None:
                obj[name] = value
        if self.seeding:
            obj["seeding"] = True
        return dumps(obj)

    def meta_value(self) -> bytes:
        obj: dict[str, object] = {"seq": self.seq, "n": self.n_p, "next": self.applied_next}
        if self.config.user_ttl_s:  # (only the TTL reads it)
            obj["st"] = self.stream_time
        if self.input_id is not None:
            obj["inc"] = self.input_id
        return dumps(obj)

    def rebase_input(self, topic_id: str | None) -> dict[bytes, bytes | None]:
        """interactions is another topic than the one `applied_next` counts in (re-created,
        or the embedded broker restarted): its offsets start again, so every record of it
        is new to the state; only the event_id window still drops duplicates. Returns
        the META change to make durable."""
        self.applied_next = 0
        self.input_id = topic_id
        return {META: self.meta_value()}

    def state_records(self) -> dict[bytes, bytes | None]:
        """Every changelogged record of this partition, from the store (a changelog seed)."""
        plen = len(self.prefix)
        return {k[plen:]: v for k, v in self.store.scan(self.prefix)
                if k[plen:] not in (LOCAL, SEEDED)}

    def all_updates(self, now: float) -> list[tuple[bytes | None, bytes | None]]:
        """A mekb-updates record for every user of this partition with a MeKB (a seed of
        a new mekb-updates topic). Scores use the df table as it stands now."""
        self._view = None  # the df table has moved since the last batch
        out: list[tuple[bytes | None, bytes | None]] = []
        plen = len(self.prefix) + len(USER)
        for key, raw in self.store.scan(self.prefix + USER):
            state = UserState.decode(raw)
            if state.counts:
                update = self._update(key[plen:].decode(), state, now).value
                out.append((update.key, update.value))
        self._view = None
        return out

    def df_snapshot(self) -> list[tuple[bytes, bytes]]:
        """Every partial of this partition (re-published after a restore, idempotently)."""
        out = [(partial_key(self.partition, e), partial_value(self.seq, v))
               for e, v in self.df_p.items()]
        out.append((partial_key(self.partition, USERS_KEY), partial_value(self.seq, self.n_p)))
        return out

    # --- lookups -----------------------------------------------------------
    def n_users(self) -> int:
        table = self.dftable
        return max(1, table.n_users - table.partial(self.partition, USERS_KEY) + self.n_p)

    def user(self, user_id: str) -> UserState:
        state = self.cache.get(user_id)
        if state is None:
            raw = self.store.get(self.prefix + USER + user_id.encode())
            state = UserState.decode(raw) if raw is not None else UserState()
            self.cache[user_id] = state
        return state

    def scored(self, counts: dict[str, float]) -> list[dict[str, object]]:
        view = self._view
        if view is None:
            view = self._view = _IdfView(self)
        titles, title = self.catalog.titles, self.catalog.title
        return [{"id": e, "title": titles.get(e) or title(e), "k": counts[e],
                 "score": score} for e, score in rank(counts, view.__getitem__, self.config.k_star)]

    def example_entities(self, user_id: str, counts: dict[str, float]) -> list[dict[str, object]]:
        """The first `example_entities` of `scored(counts)` for a training example,
        identical to them, memoised per user while the idf view holds
        (`mekb.scoring.RankMemo`): between two examples of a user only the entities of
        the events in between (`_apply` marks them) are re-weighed and get new output
        objects."""
        view = self._view
        if view is None:
            view = self._view = _IdfView(self)
        limit = self.config.example_entities
        if self.config.decay_half_life_s:
            # Decay re-weighs the whole MeKB at every event: nothing for a memo to keep.
            top = rank(counts, view.__getitem__, self.config.k_star)
            return [self._entity_object(e, counts[e], score)
                    for e, score in (top[:limit] if limit else top)]
        memo = self._memos.get(user_id)
        if memo is None:
            memo = self._memos[user_id] = RankMemo()
        # (serialised by the caller before the next example reuses the objects)
        ranked = memo.rank(counts, view.__getitem__, self._entity_object, self.config.k_star,
                           limit)
        if ranked is None:  # every idf is 0
            ranked = self.scored(counts)
            return ranked[:limit] if limit else ranked
        return ranked

    def _entity_object(self, entity_id: str, k: float, score: float = 0.0) -> dict[str, object]:
        return {"id": entity_id, "title": self.catalog.titles.get(entity_id)
                or self.catalog.title(entity_id), "k": k, "score": score}

    # --- parking -----------------------------------------------------------
    def _park(self, item: str, event_id: str, parked: _Parked) -> None:
        self.parked.setdefault(item, {})[event_id] = parked
        self.parked_count += 1
        self._park_order.append((parked.at, item, event_id))

    def _unpark(self, item: str, event_id: str, plan: FlushPlan) -> _Parked | None:
        bucket = self.parked.get(item)
        if not bucket or event_id not in bucket:
            return None
        parked = bucket.pop(event_id)
        if not bucket:
            del self.parked[item]
        self.parked_count -= 1
        plan.changes[PARK + f"{item}\x00{event_id}".encode()] = None
        return parked

    def _expire(self, now: float, plan: FlushPlan) -> None:
        horizon = now - self.config.park_ttl_s
        while self._park_order and self._park_order[0][0] <= horizon:
            _, item, event_id = self._park_order.popleft()
            parked = self._unpark(item, event_id, plan)
            if parked is None:
                continue  # applied or expired already
            rec = InRecord(parked.offset, parked.user_id.encode(), parked.raw)
            plan.outputs.append(dead_letter(
                rec, self.partition, "item_unknown", "item_id",
                f"item {item!r} unknown after {self.config.park_ttl_s:.0f}s"))
            plan.dead_letters["item_unknown"] += 1
            plan.outcomes["expired"] += 1

    # --- the batch ---------------------------------------------------------
    def process(
        self, records: Iterable[InRecord], fresh_items: Iterable[str] = (),
        now: float | None = None,
    ) -> FlushPlan:
        # Python's cyclic GC is paused for the batch. A batch makes no reference cycles
        # (plain dicts, lists, tuples: refcounting frees them), but the objects that
        # live for the batch (memos, outputs) survive the young collections, and
        # their count then triggers full collections, each a walk over every user
        # state in the cache: 30 % of the time of a batch at 2·10⁴ users, more as
        # the cache grows (docs/benchmarks.md, Scale). Cycles made meanwhile by other
        # threads wait for the end of the batch.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._process(records, fresh_items, now)
        finally:
            if enabled:
                gc.enable()

    def _process(self, records: Iterable[InRecord], fresh_items: Iterable[str],
                 now: float | None) -> FlushPlan:
        now = time.time() if now is None else now
        plan = FlushPlan(self.partition)
        self._view = None  # the df table may have moved since the last batch
        self._memos.clear()
        self._gone.clear()
        before: dict[str, set[str]] = {}
        touched: dict[str, UserState] = {}

        # Parked interactions whose item has arrived go first: they are older.
        ready = [i for i in fresh_items if i in self.parked]
        for item_id in ready:
            item = self.catalog.get(item_id)
            if item is None:
                continue
            for event_id, parked in sorted(self.parked[item_id].items(),
                                           key=lambda kv: kv[1].offset):
                self._unpark(item_id, event_id, plan)
                event = parse_interaction_fast(parked.raw)
                self._apply(event, event_hash(event.event_id), item, plan, before, touched,
                            from_park=True)
        self._expire(now, plan)

        for rec in records:
            plan.next_offset = rec.offset + 1
            if rec.offset < self.applied_next:
                # Replayed after a crash between the changelog write and the offset
                # commit: the state holds this record already, whatever the size of
                # the event_id window.
                plan.outcomes["duplicate"] += 1
                continue
            self._one(rec, plan, before, touched, now)

        self._finish(plan, before, touched, now)
        return plan

    def _one(self, rec: InRecord, plan: FlushPlan, before: dict[str, set[str]],
             touched: dict[str, UserState], now: float) -> None:
        try:
            event = parse_record_fast(rec.value)
        except EventError as exc:
            plan.outputs.append(dead_letter(rec, self.partition, exc.reason, exc.field,
                                            exc.message))
            plan.dead_letters[exc.reason] += 1
            plan.outcomes["dead_letter"] += 1
            return
        if rec.key != event.user_id.encode():
            # Per-user state needs every event of a user in one partition: the key decides.
            plan.outputs.append(dead_letter(rec, self.partition, "key_mismatch", "key",
                                            "record key must be the user_id"))
            plan.dead_letters["key_mismatch"] += 1
            plan.outcomes["dead_letter"] += 1
            return
        if isinstance(event, UserDeleteEvent):
            self._remove(event.user_id, plan, before, touched, erase=True)
            plan.outcomes["deleted"] += 1
            return
        if not self.config.is_positive(event.action, event.rating):
            plan.outcomes["ignored"] += 1
            return
        state = self.user(event.user_id)
        h = event_hash(event.event_id)
        if state.seen_event(h):
            plan.outcomes["duplicate"] += 1
            return
        item = self.catalog.get(event.item_id)
        if item is None:
            bucket = self.parked.get(event.item_id)
            if bucket and event.event_id in bucket:
                plan.outcomes["duplicate"] += 1
                return
            if self.parked_count >= self.config.park_max:
                plan.outputs.append(dead_letter(rec, self.partition, "park_full", "item_id",
                                                f"item unknown and {self.parked_count} parked"))
                plan.dead_letters["park_full"] += 1
                plan.outcomes["dead_letter"] += 1
                return
            parked = _Parked(event.user_id, rec.value, now, rec.offset)
            self._park(event.item_id, event.event_id, parked)
            plan.changes[PARK + f"{event.item_id}\x00{event.event_id}".encode()] = parked.encode()
            plan.outcomes["parked"] += 1
            inline = event.inline_item()
            if inline is not None and event.item_id not in self._forwarded:
                from mekb.events import encode

                self._forwarded.add(event.item_id)
                plan.outputs.append(Output("items", event.item_id.encode(), encode(inline)))
            return
        # The same event may still be parked (a copy arrived before its item did).
        self._unpark(event.item_id, event.event_id, plan)
        self._apply(event, h, item, plan, before, touched, from_park=False)

    def _apply(self, event: InteractionEvent, h: int, item: LinkedItem, plan: FlushPlan,
               before: dict[str, set[str]], touched: dict[str, UserState],
               *, from_park: bool) -> None:
        user_id = event.user_id
        config = self.config
        self.stream_time = max(self.stream_time, event.ts)
        if config.user_ttl_s:
            self._sweep(plan, before, touched)  # the user itself may be among them
        state = self.user(user_id)
        if user_id not in before:
            before[user_id] = set(state.counts)
            touched[user_id] = state
        self._gone.discard(user_id)  # (removed earlier in the batch: a new MeKB)
        weight = event.weight
        half_life = config.decay_half_life_s
        if half_life:
            # Counts are kept as of the user's newest event time (state.ts): decay them
            # to a newer event's time before its example, or decay a late event's weight.
            if event.ts > state.ts and state.counts:
                state.decay(2.0 ** ((state.ts - event.ts) / half_life), config.decay_min_k)
            elif event.ts < state.ts:
                weight *= 2.0 ** ((event.ts - state.ts) / half_life)
        if not from_park and event.domain in config.target_domains:
            # Point in time: the MeKB as it stands before this event. A parked event is
            # applied after later events of its user, so it gets no example (no leakage).
            plan.outputs.append(Output("training-examples", user_id.encode(), dumps({
                "v": 1, "example_id": event.event_id, "user_id": user_id, "ts": event.ts,
                "domain": event.domain, "item_id": event.item_id,
                "mekb_version": state.version, "mekb_size": len(state.counts),
                "entities": self.example_entities(user_id, state.counts),
            })))
            plan.outcomes["example"] += 1
        evicted = state.add(item.entities, weight, config.max_entities)
        if half_life:
            evicted += state.prune((e for e, _, _ in item.entities), config.decay_min_k)
        memo = self._memos.get(user_id)
        if memo is not None:
            memo.changed(entity_id for entity_id, _, _ in item.entities)
            memo.removed(evicted)
        state.version += 1
        # `ts` is the newest event time applied (docs/contracts.md): a late event counts
        # but does not move it backwards.
        state.ts = max(state.ts, event.ts)
        state.remember_event(h, self.config.dedupe_window)
        state.remember_item(event.item_id, self.config.seen_items)
        plan.outcomes["unparked" if from_park else "applied"] += 1
        plan.event_times.append(event.ts)
        if config.user_ttl_s:
            self._track(user_id, state.ts)
            self._sweep(plan, before, touched)  # an event older than the TTL horizon

    # --- removing users ----------------------------------------------------
    def _remove(self, user_id: str, plan: FlushPlan, before: dict[str, set[str]],
                touched: dict[str, UserState], *, erase: bool) -> None:
        """Empty a user's state at this point of the batch (`_finish` writes the
        changelog tombstone and moves df_p/n_p). `erase`: a deletion, which also drops
        the user's parked events and tells the trainer to drop its queued examples;
        otherwise the TTL expired the user. Idempotent: an unknown user gets the same
        tombstones."""
        state = self.user(user_id)
        if user_id not in before:
            before[user_id] = set(state.counts)
        touched[user_id] = self.cache[user_id] = UserState()
        self._gone.add(user_id)
        self._memos.pop(user_id, None)
        self._last_ts.pop(user_id, None)
        key = user_id.encode()
        if erase:
            for item_id, bucket in list(self.parked.items()):
                for event_id in [e for e, p in bucket.items() if p.user_id == user_id]:
                    self._unpark(item_id, event_id, plan)
            plan.outputs.append(Output("training-examples", key, None))
        plan.outputs.append(Output("mekb-updates", key, None))

    def _track(self, user_id: str, ts: float) -> None:
        if self._last_ts.get(user_id) == ts:
            return
        self._last_ts[user_id] = ts
        heapq.heappush(self._expiry, (ts, user_id))
        if len(self._expiry) > 2 * len(self._last_ts) + 64:  # drop the stale entries
            self._expiry = [(t, u) for u, t in self._last_ts.items()]
            heapq.heapify(self._expiry)

    def _sweep(self, plan: FlushPlan, before: dict[str, set[str]],
               touched: dict[str, UserState]) -> None:
        """Remove every user whose newest event time is more than the TTL behind the
        partition's stream time."""
        horizon = self.stream_time - self.config.user_ttl_s
        heap = self._expiry
        while heap and heap[0][0] < horizon:
            ts, user_id = heapq.heappop(heap)
            if self._last_ts.get(user_id) == ts:
                self._remove(user_id, plan, before, touched, erase=False)
                plan.outcomes["user_expired"] += 1

    def _finish(self, plan: FlushPlan, before: dict[str, set[str]],
                touched: dict[str, UserState], now: float) -> None:
        changed: set[str] = set()
        n_before = self.n_p
        for user_id, state in touched.items():
            after = set(state.counts)
            was = before[user_id]
            for entity_id in after - was:
                self.df_p[entity_id] = self.df_p.get(entity_id, 0) + 1
                changed.add(entity_id)
            for entity_id in was - after:
                self.df_p[entity_id] -= 1
                changed.add(entity_id)
            if bool(after) != bool(was):
                self.n_p += 1 if after else -1
        if self._view is not None:  # mekb-updates score with the new values
            self._view.moved(changed, self.n_users())
        self._memos.clear()
        for entity_id in changed:
            value = self.df_p.get(entity_id, 0)
            if value == 0:
                self.df_p.pop(entity_id, None)
            plan.changes[DF + entity_id.encode()] = str(value).encode() if value else None
        for user_id, state in touched.items():
            if user_id in self._gone:  # its mekb-updates tombstone went out at removal
                plan.changes[USER + user_id.encode()] = None
                continue
            plan.changes[USER + user_id.encode()] = state.encode()
            update = self._update(user_id, state, now)
            plan.mekb_sizes.append(update.size)
            plan.outputs.append(update.value)
        # A batch that changed no user (dead letters, duplicates) still moves the state's
        # position: the consumer resumes from it, not from the group's offset
        # (StreamWorker.assign), so what it consumed must be durable with the state too.
        moved = plan.next_offset is not None and plan.next_offset > self.applied_next
        if plan.changes or moved:
            self.seq += 1
            if plan.next_offset is not None:
                self.applied_next = max(self.applied_next, plan.next_offset)
            # `next`: the input offset the state has consumed up to (changelogged with
            # the batch, so a restore knows it too), with the id of the topic it counts in.
            plan.changes[META] = self.meta_value()
            plan.df_partials = [
                (partial_key(self.partition, e), partial_value(self.seq, self.df_p.get(e, 0)))
                for e in sorted(changed)
            ]
            if self.n_p != n_before:
                plan.df_partials.append(
                    (partial_key(self.partition, USERS_KEY), partial_value(self.seq, self.n_p)))
        if len(self.cache) > self.cache_max:
            # FIFO eviction of decoded states; the store holds all of them.
            for user_id in list(self.cache)[: len(self.cache) - self.cache_max]:
                if user_id not in touched:
                    del self.cache[user_id]

    def _update(self, user_id: str, state: UserState, now: float) -> _Update:
        entities = self.scored(state.counts)
        return _Update(len(entities), Output("mekb-updates", user_id.encode(), dumps({
            "v": 1, "user_id": user_id, "version": state.version, "ts": state.ts,
            "updated_at": now, "n_users": self.n_users(), "entities": entities,
            "seen_items": state.seen[::-1],
        })))


@dataclass(slots=True)
class _Update:
    size: int
    value: Output
