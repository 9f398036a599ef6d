"""The worker's RocksDB store under the pipelined worker's access pattern: one thread
reads users' states (the batch being processed) while another writes WriteBatches
(the previous batch being made durable)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from streams.state.rocksdb import RocksDBStore


def test_reads_during_concurrent_atomic_writes(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    keys = [b"0/u\x00user%d" % i for i in range(200)]
    store.write({k: b"v0" for k in keys})
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                for k in keys:
                    value = store.get(k)
                    assert value is not None
                    seen.add(value)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    n = 0
    deadline = time.monotonic() + 20
    try:
        # At least 300 WriteBatches, and on until the reader has seen one of them.
        while n < 300 or (len(seen) < 2 and time.monotonic() < deadline):
            n += 1
            store.write({k: b"v%d" % n for k in keys} | {b"0/m": b"%d" % n})
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    assert len(seen) > 1  # the reader really ran while the writes went on
    assert {store.get(k) for k in keys} == {b"v%d" % n}
    assert list(store.scan(b"0/m")) == [(b"0/m", b"%d" % n)]
    store.close()
