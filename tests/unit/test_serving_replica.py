"""Replica (RocksDB), cache, provider selection and the dynamic batcher."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.batcher import DynamicBatcher
from serving.cache import CachedEmbedding, EmbeddingCache
from serving.encoder import CPU, CUDA, select_providers
from serving.metrics import ServingMetrics
from serving.replica import BadRecord, Entity, Incoming, Replica, parse_record


def _value(user: str, version: int, title: str = "T") -> bytes:
    return json.dumps({"v": 1, "user_id": user, "version": version, "ts": time.time(),
                       "updated_at": time.time(), "entities": [{"id": "kb:" + title,
                                                                 "title": title, "score": 1.0}],
                       "seen_items": ["i1"]}).encode()


def test_replica_survives_reopen_with_offsets(tmp_path: Path) -> None:
    path = tmp_path / "replica"
    replica = Replica(path)
    result = replica.apply([
        Incoming(0, 0, b"u1", _value("u1", 1, "A")),
        Incoming(1, 5, b"u2", _value("u2", 4, "B")),
        Incoming(0, 1, b"u1", _value("u1", 2, "C")),  # newer in the same batch wins
    ])
    assert {r.user_id: r.version for r in result.applied} == {"u1": 2, "u2": 4}
    replica.close()
    reopened = Replica(path)
    assert reopened.offsets() == {0: 2, 1: 6}
    rec = reopened.get("u1")
    assert rec is not None and rec.version == 2 and rec.titles() == ["C"]
    assert reopened.count_users() == 2
    reopened.close()


@pytest.mark.parametrize("path", [None, "rocks"])
def test_replica_ignores_older_versions_bad_records_and_applies_tombstones(
    tmp_path: Path, path: str | None
) -> None:
    replica = Replica(tmp_path / path if path else None)
    replica.apply([Incoming(0, 0, b"u1", _value("u1", 5))])
    result = replica.apply([
        Incoming(0, 1, b"u1", _value("u1", 5, "same")),
        Incoming(0, 2, b"u1", _value("u1", 3, "older")),
        Incoming(0, 3, b"u2", b"{not json"),
        Incoming(0, 4, b"u3", _value("someone-else", 1)),  # key/user_id mismatch
        Incoming(0, 5, b"u4", json.dumps({"user_id": "u4", "version": -1}).encode()),
    ])
    assert result.applied == [] and result.older == 2 and result.bad == 3
    assert replica.get("u1").version == 5 and replica.get("u1").titles() == ["T"]
    assert replica.offsets() == {0: 6}  # bad records are consumed, not retried forever
    deleted = replica.apply([Incoming(0, 6, b"u1", None)])
    assert deleted.deleted == ["u1"] and replica.get("u1") is None
    # after a delete, a fresh history of the user starts again
    assert replica.apply([Incoming(0, 7, b"u1", _value("u1", 1))]).applied[0].version == 1


@pytest.mark.parametrize("value, reason", [
    ({"user_id": "u1", "version": True}, "Expected `int`, got `bool`"),
    ({"user_id": "", "version": 1}, "at `$.user_id`"),
    ({"user_id": "u1", "version": 1, "entities": ["kb:A"]}, "at `$.entities[0]`"),
    ({"user_id": "u1", "version": 1, "entities": [{"title": "A"}]}, "missing required field `id`"),
    ({"user_id": "u1", "version": 1, "entities": [{"id": "kb:A", "score": "high"}]},
     "at `$.entities[0].score`"),
    ({"user_id": "u1", "version": 1, "ts": "yesterday"}, "at `$.ts`"),
    ([1, 2], "Expected `object`, got `array`"),
])
def test_a_bad_record_says_what_is_wrong(value: object, reason: str) -> None:
    with pytest.raises(BadRecord, match=re.escape(reason)):
        parse_record(json.dumps(value).encode())


def test_a_record_keeps_the_contract_fields_and_ignores_others() -> None:
    rec = parse_record(json.dumps({
        "v": 1, "user_id": "u1", "version": 3, "n_users": 9, "ts": 5, "future": {"x": 1},
        "entities": [{"id": "kb:B", "score": 0.25, "extra": True},
                     {"id": "kb:A", "title": "A", "k": 2, "score": 0.5}]}).encode())
    assert (rec.user_id, rec.version, rec.ts, rec.updated_at, rec.seen_items) == \
        ("u1", 3, 5.0, 0.0, [])
    assert rec.entities == [Entity("kb:B", "", 0.0, 0.25), Entity("kb:A", "A", 2.0, 0.5)]
    assert rec.titles() == ["A", "kb:B"]  # by score; an untitled entity shows its id


KILLED_WRITER = """
import sys
from serving.replica import BadRecord, Entity, Incoming, Replica, parse_record
replica = Replica(sys.argv[1])
value = b'{"user_id": "u%d", "version": 1, "entities": [{"id": "kb:%d", "title": "%s"}]}'
offset = 0
while True:  # batches of 500 users, until killed
    replica.apply([Incoming(0, offset + i, b"u%d" % (offset + i),
                            value % (offset + i, offset + i, b"x" * 2000))
                   for i in range(500)])
    offset += 500
    if offset == 50_000:
        print("ready", flush=True)
"""


def test_a_killed_replica_keeps_every_applied_batch_whole(tmp_path: Path) -> None:
    """A SIGKILL in the middle of applying: the reopened replica holds every batch that
    `apply` returned from (its write-ahead log), and only whole batches, records and
    offsets together, so the follower resumes at the first record it lacks."""
    path = tmp_path / "replica"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    finally:
        writer.kill()
        writer.wait()
    replica = Replica(path)
    try:
        offset = replica.offsets().get(0, 0)
        assert offset % 500 == 0 and offset >= 50_000  # the batches before "ready", at least
        assert replica.count_users() == offset
        assert replica.get(f"u{offset - 1}") is not None and replica.get(f"u{offset}") is None
    finally:
        replica.close()


def test_cache_never_replaces_newer_and_evicts_lru() -> None:
    cache = EmbeddingCache(2)
    e = np.zeros(2, dtype=np.float32)
    cache.put("a", CachedEmbedding(2, "t", e, 0.0))
    cache.put("a", CachedEmbedding(1, "t", e + 1, 0.0))  # late computation of an older one
    assert cache.get("a", 2, "t") is not None and cache.get("a", 1, "t") is None
    assert cache.get("a", 2, "other-tower") is None
    cache.put("b", CachedEmbedding(1, "t", e, 0.0))
    cache.get("a", 2, "t")  # a is now the most recent
    cache.put("c", CachedEmbedding(1, "t", e, 0.0))
    assert cache.get("b", 1, "t") is None and cache.get("a", 2, "t") is not None


def test_provider_selection_is_quiet_and_cpu_without_gpu(caplog) -> None:
    assert select_providers("auto", [CPU], gpus=0) == [CPU]
    assert select_providers("auto", [CUDA, CPU], gpus=0) == [CPU]
    assert select_providers("auto", [CUDA, CPU], gpus=1) == [CUDA, CPU]
    assert select_providers("cpu", [CUDA, CPU], gpus=1) == [CPU]
    assert not caplog.records  # auto never warns
    assert select_providers("cuda", [CPU], gpus=1) == [CPU]
    assert "no CUDA provider" in caplog.text


def test_batcher_batches_concurrent_requests_before_refreshes() -> None:
    calls: list[tuple[str, int]] = []

    def encode(model: str, texts: list[str]) -> tuple[np.ndarray, float]:
        time.sleep(0.02)  # a run is busy while more work queues up
        calls.append((model, len(texts)))
        return np.asarray([[float(len(t))] for t in texts], dtype=np.float32), 0.02

    metrics = ServingMetrics(CollectorRegistry())

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(encode, metrics, max_batch=8, refresh_batch=2)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit("m", ["x"], "request"))
            await asyncio.sleep(0.005)  # the first run starts alone
            refresh = asyncio.ensure_future(batcher.submit("m", ["r1", "r2", "r3"], "refresh"))
            reqs = [asyncio.ensure_future(batcher.submit("m", ["y" * n], "request"))
                    for n in range(1, 6)]
            other = asyncio.ensure_future(batcher.submit("m2", ["zz"], "request"))
            return await asyncio.gather(first, *reqs, other, refresh)
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert [float(r[0][0]) for r in results[1:6]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert results[-1].shape == (3, 1)
    # the 5 queued requests ran as one batch before any refresh; models never mixed
    assert calls[0] == ("m", 1) and calls[1] == ("m", 5) and calls[2] == ("m2", 1)
    assert calls[3:] == [("m", 2), ("m", 1)]


@pytest.mark.parametrize("path", [None, "rocks"])
def test_replica_versions_are_checked_from_their_own_keys(tmp_path: Path,
                                                          path: str | None) -> None:
    """A stored user's version comes from its `v:` key (no decode of its record); a
    replica written before those keys (records only) still refuses older versions, and a
    tombstone removes both keys."""
    from serving.replica import USER, VERSION

    replica = Replica(tmp_path / path if path else None)
    replica.apply([Incoming(0, 0, b"u1", _value("u1", 5)), Incoming(0, 1, b"u2", _value("u2", 2))])
    assert replica._get_many([VERSION + b"u1", VERSION + b"u2"]) == [
        (5).to_bytes(8, "big"), (2).to_bytes(8, "big")]
    # the version key decides, not the record: a record that no longer parses is not read
    replica._write({USER + b"u1": b"{damaged"})
    assert replica.apply([Incoming(0, 2, b"u1", _value("u1", 4))]).older == 1
    # written before the version keys: the record's own version is used
    replica._write({VERSION + b"u2": None})
    result = replica.apply([Incoming(0, 3, b"u2", _value("u2", 1)),
                            Incoming(0, 4, b"u2", _value("u2", 3, "new"))])
    assert result.older == 1 and [(r.user_id, r.version) for r in result.applied] == [("u2", 3)]
    assert replica._get_many([VERSION + b"u2"]) == [(3).to_bytes(8, "big")]
    result = replica.apply([Incoming(0, 5, b"u2", None), Incoming(0, 6, b"u2", _value("u2", 1))])
    assert result.deleted == ["u2"] and [r.version for r in result.applied] == [1]
    replica.apply([Incoming(0, 7, b"u2", None)])
    assert replica.get("u2") is None and replica._get_many([VERSION + b"u2"]) == [None]
    assert replica.offsets() == {0: 8}


def test_observe_many_equals_observe_per_value() -> None:
    """The batch path of the serving histograms counts exactly what observe() would."""
    from prometheus_client import Histogram

    from serving.batcher import observe_many

    reg = CollectorRegistry()
    one = Histogram("one_seconds", "", buckets=(0.01, 0.5, 1.0), registry=reg)
    many = Histogram("many_seconds", "", buckets=(0.01, 0.5, 1.0), registry=reg)
    values = np.asarray([0.0, 0.01, 0.0100001, 0.5, 0.7, 1.0, 3.0, 250.0])
    for v in values:
        one.observe(float(v))
    observe_many(many, values)
    observe_many(many, np.zeros(0))
    samples = {s.name.replace("one", "x").replace("many", "x") + str(s.labels): s.value
               for m in reg.collect() for s in m.samples if not s.name.endswith("_created")}
    got = {s.name + str(s.labels): s.value for m in reg.collect() for s in m.samples
           if s.name.startswith("many") and not s.name.endswith("_created")}
    assert got and all(v == samples[k.replace("many", "x")] for k, v in got.items())
    assert got["many_seconds_bucket{'le': '0.01'}"] == 2
