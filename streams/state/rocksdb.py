"""RocksDB StateStore via rocksdict (raw bytes mode, WriteBatch for atomic batches)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from mekb.rocksdb import write_atomically
from streams.state.base import StateStore

logger = logging.getLogger(__name__)


class RocksDBStore(StateStore):
    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict

        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), opts)
        self.path = path
        logger.info("RocksDB state at %s", path)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        # One WriteBatch: a crash leaves either all of a flush or none of it on disk.
        write_atomically(self._db, changes)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()
        del it

    def close(self) -> None:
        self._db.close()
