"""The key-value store interface the stream worker keeps its state in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping


class StateStore(ABC):
    """Bytes to bytes, with atomic multi-key writes and ordered prefix scans."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None."""

    @abstractmethod
    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Apply every change atomically (None deletes the key)."""

    @abstractmethod
    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix`, in key order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release the store."""
