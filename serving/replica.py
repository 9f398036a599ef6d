"""The serving replica of `mekb-updates`: the latest MeKB of every user, in RocksDB.

Each serving process keeps its own replica (no consumer group: every replica needs
every partition). Records and the next offset of their partition are written in
ONE WriteBatch, so after a crash or restart the replica resumes exactly where its
state ends, never applying a record twice or skipping one. Deleting the replica
directory rebuilds it from the compacted topic (offsets start at the beginning).

The offsets belong to one `mekb-updates` topic: its id (mekb/topics.py) is stored with
them. A topic with another id (re-created, or the embedded broker restarted) drops
the offsets, not the users: the replica reads the new topic from its beginning, and
the versions below keep what it holds already.

Per-user versions are monotonic (docs/contracts.md): a record whose `version` is
not newer than the stored one is ignored (redelivery, a compaction replay, or an
out-of-order duplicate). Each user's version is also stored on its own (`v:` key, in
the same WriteBatch), so that check is one multi-get per batch instead of a read and
JSON decode of the stored record per update (a replica written before the `v:` keys
falls back to decoding the record, once per user).
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any

import msgspec

from mekb.rocksdb import write_atomically

logger = logging.getLogger(__name__)

USER = b"u:"
VERSION = b"v:"  # user -> its record's version (>q), written with the record
OFFSET = b"o:"
TOPIC_ID = b"i:"  # id of the topic the offsets were read from
MAX_USER_ID_BYTES = 512


class BadRecord(ValueError):
    """A mekb-updates value that does not follow the contract."""


class Entity(msgspec.Struct, frozen=True, gc=False):
    """One weighted entity of a MeKB (docs/contracts.md); fields the contract does not
    name are ignored. gc=False: instances hold only strings and floats, so they cannot
    be part of a reference cycle and the cyclic GC need not track them."""

    id: str
    title: str = ""
    k: float = 0.0
    score: float = 0.0


class UserRecord(msgspec.Struct, frozen=True, gc=False):
    """One user's MeKB as served: a mekb-updates value, decoded and validated in one
    typed pass (msgspec: ~1.8x faster than a generic decode into dicts, in ~0.6x the
    memory; this decode was the largest share of an update's cost in serving)."""

    user_id: Annotated[str, msgspec.Meta(min_length=1)]
    version: Annotated[int, msgspec.Meta(ge=0)]
    ts: float = 0.0
    updated_at: float = 0.0
    entities: list[Entity] = []
    seen_items: list[str] = []

    def titles(self) -> list[str]:
        """Entity titles by descending score (the EmbedMe input order)."""
        ranked = sorted(self.entities, key=attrgetter("score"), reverse=True)  # stable
        return [e.title or e.id for e in ranked]


_decode = msgspec.json.Decoder(UserRecord).decode


def parse_record(raw: bytes, key_user: str | None = None) -> UserRecord:
    """Validate a mekb-updates value; BadRecord says what is wrong."""
    try:
        record = _decode(raw)
    except msgspec.ValidationError as exc:  # e.g. "Expected `int`, got `str` - at `$.version`"
        raise BadRecord(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRecord(f"not JSON: {exc}") from None
    if key_user is not None and key_user != record.user_id:
        raise BadRecord(f"key {key_user!r} differs from user_id {record.user_id!r}")
    return record


def _offset_key(partition: int) -> bytes:
    return OFFSET + struct.pack(">I", partition)


@dataclass(frozen=True)
class Incoming:
    """One consumed record: partition, offset, key and value (None = tombstone)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class ApplyResult:
    applied: list[UserRecord]
    deleted: list[str]
    older: int
    bad: int


class Replica:
    """RocksDB (path given) or in-memory (path None, for tests) replica."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: Any
        if path is None:
            self._db = {}
        else:
            from rocksdict import Options, Rdict

            Path(path).mkdir(parents=True, exist_ok=True)
            opts = Options(raw_mode=True)
            opts.create_if_missing(True)
            # With its write-ahead log: without it (half of a batch's write cost) a crash
            # reopens the replica at its last memtable flush, so a restarted server
            # answers from older MeKBs, and 404s users added since, until it has re-read
            # them (tests/integration/test_up_supervision.py; docs/benchmarks.md).
            self._db = Rdict(str(path), opts)

    def close(self) -> None:
        if self.path is not None:
            self._db.close()

    # --- reading -----------------------------------------------------------------
    def get(self, user_id: str) -> UserRecord | None:
        raw = self._db.get(USER + user_id.encode())
        if raw is None:
            return None
        return parse_record(raw)

    def get_many(self, user_ids: list[str]) -> list[UserRecord | None]:
        """`get` of each of `user_ids` (one multi-get), in order."""
        raws = self._get_many([USER + u.encode() for u in user_ids])
        return [None if raw is None else parse_record(raw) for raw in raws]

    def offsets(self) -> dict[int, int]:
        """Next offset to consume per partition (absent = from the beginning)."""
        out = {}
        if self.path is None:
            items: Iterable[tuple[bytes, bytes]] = (
                (k, v) for k, v in self._db.items() if k.startswith(OFFSET)
            )
        else:
            items = self._db.items(from_key=OFFSET)
        for key, value in items:
            if not key.startswith(OFFSET):
                break
            out[struct.unpack(">I", key[len(OFFSET):])[0]] = struct.unpack(">q", value)[0]
        return out

    def topic_id(self) -> str | None:
        """Id of the mekb-updates topic the offsets belong to (None: not recorded)."""
        raw = self._db.get(TOPIC_ID)
        return None if raw is None else bytes(raw).decode()

    # --- writing -----------------------------------------------------------------
    def set_topic_id(self, topic_id: str | None, *, rebase: bool) -> None:
        """Record the id of the topic the offsets belong to; with `rebase`, the offsets
        belong to another topic: drop them (users kept), in the same write."""
        writes: dict[bytes, bytes | None] = {}
        if rebase:
            writes = {_offset_key(p): None for p in self.offsets()}
        writes[TOPIC_ID] = None if topic_id is None else topic_id.encode()
        self._write(writes)

    def apply(self, records: Iterable[Incoming]) -> ApplyResult:
        """Apply consumed records and their offsets atomically; older versions ignored."""
        result = ApplyResult([], [], 0, 0)
        writes: dict[bytes, bytes | None] = {}
        next_offsets: dict[int, int] = {}
        # (user, record, raw value) in consumption order; None record = tombstone
        parsed: list[tuple[str, UserRecord | None, bytes | None]] = []
        for rec in records:
            next_offsets[rec.partition] = max(next_offsets.get(rec.partition, 0),
                                              rec.offset + 1)
            key_user = rec.key.decode("utf-8", "replace") if rec.key else None
            if key_user is not None and len(rec.key or b"") > MAX_USER_ID_BYTES:
                result.bad += 1
                continue
            if rec.value is None:  # tombstone: the user was deleted upstream
                if key_user is not None:
                    parsed.append((key_user, None, None))
                continue
            try:
                incoming = parse_record(rec.value, key_user)
            except BadRecord as exc:
                logger.warning("mekb-updates p%d@%d: bad record: %s", rec.partition,
                               rec.offset, exc)
                result.bad += 1
                continue
            parsed.append((incoming.user_id, incoming, rec.value))
        # versions stored before this batch: one multi-get for the whole batch
        latest = self._stored_versions({u for u, r, _ in parsed if r is not None})
        for user_id, record, value in parsed:
            key = USER + user_id.encode()
            if record is None:
                writes[key] = writes[VERSION + key[len(USER):]] = None
                latest[user_id] = None
                result.deleted.append(user_id)
                continue
            current = latest.get(user_id)
            if current is not None and record.version <= current:
                result.older += 1
                continue
            latest[user_id] = record.version
            writes[key] = value
            writes[VERSION + key[len(USER):]] = struct.pack(">q", record.version)
            result.applied.append(record)
        for partition, offset in next_offsets.items():
            writes[_offset_key(partition)] = struct.pack(">q", offset)
        self._write(writes)
        # a user updated twice in one batch is reported once, with its newest record
        newest = {r.user_id: r for r in result.applied}
        result.applied = list(newest.values())
        return result

    def _stored_versions(self, users: set[str]) -> dict[str, int | None]:
        """The stored version of each of `users` (absent: no record)."""
        if not users:
            return {}
        names = list(users)
        keys = [n.encode() for n in names]
        out: dict[str, int | None] = {}
        legacy: list[int] = []  # records without a `v:` key (written before them)
        for n, raw in enumerate(self._get_many([VERSION + k for k in keys])):
            if raw is not None:
                out[names[n]] = struct.unpack(">q", raw)[0]
            else:
                legacy.append(n)
        if legacy:
            stored = self._get_many([USER + keys[n] for n in legacy])
            for n, raw in zip(legacy, stored, strict=True):
                if raw is None:
                    continue
                with contextlib.suppress(BadRecord):  # unreadable: any valid one replaces it
                    out[names[n]] = parse_record(raw).version
        return out

    def _get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if self.path is None:
            return [self._db.get(k) for k in keys]
        got: list[bytes | None] = self._db.get(keys)
        return got

    def _write(self, writes: dict[bytes, bytes | None]) -> None:
        if not writes:
            return
        if self.path is None:
            for key, value in writes.items():
                if value is None:
                    self._db.pop(key, None)
                else:
                    self._db[key] = value
            return
        # One WriteBatch: records and their offsets land together or not at all.
        write_atomically(self._db, writes)

    def count_users(self) -> int:
        """Number of users (a scan: for tests and the startup log only)."""
        if self.path is None:
            return sum(1 for k in self._db if k.startswith(USER))
        n = 0
        for key in self._db.keys(from_key=USER):
            if not key.startswith(USER):
                break
            n += 1
        return n
