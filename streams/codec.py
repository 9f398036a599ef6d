"""Wire and state encodings of the stream worker (orjson: the hot path encodes every
user state, changelog record and output once per batch)."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush
from typing import Any

import orjson

from mekb.events import (
    InteractionEvent,
    UserDeleteEvent,
    parse_interaction,
    parse_interactions_record,
)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)


def event_hash(event_id: str) -> int:
    """64-bit id of an event for the dedupe window (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def parse_interaction_fast(raw: bytes) -> InteractionEvent:
    """The contract's validator on raw JSON (pydantic's Rust parser, one pass); when it
    fails, the reference parser runs to raise the contract's EventError and reason."""
    if len(raw) <= 64 * 1024:
        try:
            return InteractionEvent.model_validate_json(raw)
        except ValueError:
            pass
    return parse_interaction(raw)


def parse_record_fast(raw: bytes) -> InteractionEvent | UserDeleteEvent:
    """`parse_interaction_fast` for any record of the interactions topic: a record that
    is no valid interaction is parsed again by the topic's reference parser, which
    knows user deletions (rare) and raises the contract's EventError otherwise."""
    if len(raw) <= 64 * 1024:
        try:
            return InteractionEvent.model_validate_json(raw)
        except ValueError:
            pass
    return parse_interactions_record(raw)


@dataclass
class UserState:
    """One user's MeKB: entity counts k, the dedupe window, recently seen items."""

    version: int = 0
    ts: float = 0.0
    counts: dict[str, float] = field(default_factory=dict)
    recent: list[int] = field(default_factory=list)  # event hashes, oldest first
    seen: list[str] = field(default_factory=list)  # item ids, oldest first
    _recent_set: set[int] | None = None
    # (k, entity) min-heap for top-M eviction, built the first time the user reaches the
    # cap. Every (k, e) is pushed when set, so the current pairs are always in the heap;
    # an entry whose k differs from counts[e] is stale and is skipped when popped.
    _heap: list[tuple[float, str]] | None = None

    def add(self, entities: Iterable[tuple[str, str, float]], weight: float,
            max_entities: int) -> list[str]:
        """k(e) += weight × entity weight for each (id, title, weight) entity, then evict
        the lowest k beyond `max_entities` (ties: smallest id) — the same victims as
        sorting every (k, id) pair, at O(log M) per update instead of O(M) per event.
        Returns the evicted entity ids."""
        counts, heap = self.counts, self._heap
        for entity_id, _, entity_weight in entities:
            k = counts[entity_id] = counts.get(entity_id, 0.0) + weight * entity_weight
            if heap is not None:
                heappush(heap, (k, entity_id))
        excess = len(counts) - max_entities
        if excess <= 0:
            return []
        if heap is None or len(heap) > 4 * len(counts) + 64:  # build, or drop stale entries
            heap = self._heap = [(k, e) for e, k in counts.items()]
            heapify(heap)
        victims: list[str] = []
        while len(victims) < excess:
            k, entity_id = heappop(heap)
            if counts.get(entity_id) == k:
                del counts[entity_id]
                victims.append(entity_id)
        return victims

    def decay(self, factor: float, min_k: float) -> list[str]:
        """k(e) *= factor for every entity (0 < factor <= 1); an entity left below
        `min_k` is dropped. Returns the dropped ids."""
        counts = self.counts = {e: k * factor for e, k in self.counts.items()}
        dropped = [e for e, k in counts.items() if k < min_k]
        for entity_id in dropped:
            del counts[entity_id]
        self._heap = None  # every (k, e) pair moved: rebuilt when next needed
        return dropped

    def prune(self, entity_ids: Iterable[str], min_k: float) -> list[str]:
        """Drop those of `entity_ids` held with k below `min_k`; returns them."""
        counts = self.counts
        dropped = [e for e in dict.fromkeys(entity_ids) if counts.get(e, min_k) < min_k]
        for entity_id in dropped:
            del counts[entity_id]  # (a stale heap entry is skipped when popped)
        return dropped

    def seen_event(self, h: int) -> bool:
        if self._recent_set is None:
            self._recent_set = set(self.recent)
        return h in self._recent_set

    def remember_event(self, h: int, window: int) -> None:
        if self._recent_set is None:
            self._recent_set = set(self.recent)
        self.recent.append(h)
        self._recent_set.add(h)
        if len(self.recent) > window:
            drop = self.recent[: len(self.recent) - window]
            del self.recent[: len(drop)]
            for old in drop:
                self._recent_set.discard(old)

    def remember_item(self, item_id: str, limit: int) -> None:
        if limit <= 0:
            return
        if self.seen and self.seen[-1] == item_id:
            return
        if item_id in self.seen:
            self.seen.remove(item_id)
        self.seen.append(item_id)
        if len(self.seen) > limit:
            del self.seen[: len(self.seen) - limit]

    def encode(self) -> bytes:
        packed = struct.pack(f"<{len(self.recent)}Q", *self.recent)
        return dumps({
            "v": self.version, "ts": self.ts, "c": self.counts,
            "r": base64.b64encode(packed).decode("ascii"), "s": self.seen,
        })

    @classmethod
    def decode(cls, raw: bytes) -> UserState:
        obj = loads(raw)
        packed = base64.b64decode(obj["r"])
        recent = list(struct.unpack(f"<{len(packed) // 8}Q", packed))
        return cls(int(obj["v"]), float(obj["ts"]), dict(obj["c"]), recent, list(obj["s"]))
