"""RocksDB (rocksdict) helpers shared by the stream worker's state and serving's replica."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def write_atomically(db: Any, changes: Mapping[bytes, bytes | None]) -> None:
    """Apply puts and deletes (value None) of raw-mode `db` in one WriteBatch: after a
    crash either all of them are on disk or none is."""
    from rocksdict import WriteBatch

    batch = WriteBatch(raw_mode=True)
    for key, value in changes.items():
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    db.write(batch)
