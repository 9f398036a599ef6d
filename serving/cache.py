"""User embedding cache keyed by (user, MeKB version, user tower).

One entry per user (LRU): the embedding of one MeKB version computed by one user
tower. A lookup is a hit only when both match the user's latest applied MeKB
version and the active model's tower, so a cached embedding is never older than
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
        self._entries: OrderedDict[str, CachedEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str, mekb_version: int, tower: str) -> CachedEmbedding | None:
        entry = self._entries.get(user_id)
        if entry is None or entry.mekb_version != mekb_version or entry.tower != tower:
            return None
        self._entries.move_to_end(user_id)
        return entry

    def get_any(self, user_id: str, tower: str) -> CachedEmbedding | None:
        """Whatever this tower computed for the user, however old (allow_stale)."""
        entry = self._entries.get(user_id)
        return entry if entry is not None and entry.tower == tower else None

    def put(self, user_id: str, entry: CachedEmbedding) -> None:
        if self.max_users <= 0:
            return
        old = self._entries.get(user_id)
        # A late computation of an older MeKB version never replaces a newer one.
        if old is not None and old.tower == entry.tower and old.mekb_version > entry.mekb_version:
            return
        self._entries[user_id] = entry
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
