"""User embedding cache keyed by (user, MeKB version, user tower).

One entry per (user, tower) (LRU): the embedding of the newest MeKB version that
tower computed. Two towers coexist only around a swap: the new one is pre-warmed
for the most recent users before the switch while the old one still serves.
A lookup is a hit only when the entry's MeKB version is the user's latest applied
one and its tower is the pinned model's, so a cached embedding is never older than
the replica (freshness) and never from another model version (consistency).
The tower key (serving.model.tower_key) is shared by an `items` refit and its
parent, which use the same user tower.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CachedEmbedding:
    mekb_version: int
    tower: str
    embedding: np.ndarray
    computed_at: float


class EmbeddingCache:
    """LRU of user embeddings. Used from the event loop only (no locking needed)."""

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self._entries: OrderedDict[tuple[str, str], CachedEmbedding] = OrderedDict()
        self._towers: set[str] = set()  # every tower that put an entry (a few)
        # Erasures vs computations in flight: `epoch` counts forget() calls; a put made
        # with the epoch its computation started at is dropped for a user forgotten
        # since (an embedding of the erased MeKB must not come back, nor block the new
        # MeKB's versions, which start again at 0). Cleared once nothing is in flight.
        self.epoch = 0
        self._erased: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str, mekb_version: int, tower: str) -> CachedEmbedding | None:
        entry = self._entries.get((user_id, tower))
        if entry is None or entry.mekb_version != mekb_version:
            return None
        self._entries.move_to_end((user_id, tower))
        return entry

    def get_any(self, user_id: str, tower: str) -> CachedEmbedding | None:
        """Whatever this tower computed for the user, however old (allow_stale)."""
        return self._entries.get((user_id, tower))

    def put(self, user_id: str, entry: CachedEmbedding, since: int | None = None) -> None:
        """Cache `entry`; `since`: the epoch its computation started at (see above)."""
        if self.max_users <= 0:
            return
        if since is not None and self._erased.get(user_id, 0) > since:
            return
        key = (user_id, entry.tower)
        old = self._entries.get(key)
        # A late computation of an older MeKB version never replaces a newer one.
        if old is not None and old.mekb_version > entry.mekb_version:
            return
        self._entries[key] = entry
        self._towers.add(entry.tower)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)

    def forget(self, user_id: str) -> None:
        """Drop the user's entries of every tower (a deleted user: its next MeKB starts
        again at version 0, whose embedding must not be an old one of that number)."""
        self.epoch += 1
        self._erased[user_id] = self.epoch
        for tower in self._towers:
            self._entries.pop((user_id, tower), None)

    def settle(self) -> None:
        """Nothing is being computed: no put can carry an epoch before an erasure."""
        self._erased.clear()

    def recent_users(self, n: int) -> list[str]:
        """Up to n distinct users, most recently used first."""
        out: list[str] = []
        seen: set[str] = set()
        for user_id, _ in reversed(self._entries):
            if user_id not in seen:
                seen.add(user_id)
                out.append(user_id)
                if len(out) >= n:
                    break
        return out

    def clear(self) -> None:
        self._entries.clear()
