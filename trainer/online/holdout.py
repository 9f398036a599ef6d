"""The quality gate's held-out slice of the stream.

An example is held out when a stable hash of its example_id falls in the first
`fraction` of the hash space: the same example is held out on every replay and by
every trainer process, and is never trained on.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def is_held_out(example_id: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(example_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


class RecentWindow(Generic[T]):
    """The most recent `capacity` items (oldest dropped first)."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[T] = deque(maxlen=max(1, capacity))

    def add(self, item: T) -> None:
        self._items.append(item)

    def drop(self, keep: Callable[[T], bool]) -> int:
        """Keep only the items `keep` accepts (order kept); returns how many went."""
        kept = [x for x in self._items if keep(x)]
        dropped = len(self._items) - len(kept)
        if dropped:
            self._items = deque(kept, maxlen=self._items.maxlen)
        return dropped

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))
