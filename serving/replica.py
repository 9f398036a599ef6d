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
out-of-order duplicate).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mekb.rocksdb import write_atomically

logger = logging.getLogger(__name__)

USER = b"u:"
OFFSET = b"o:"
TOPIC_ID = b"i:"  # id of the topic the offsets were read from
MAX_USER_ID_BYTES = 512


class BadRecord(ValueError):
    """A mekb-updates value that does not follow the contract."""


@dataclass(frozen=True)
class UserRecord:
    """One user's MeKB as served (parsed from a mekb-updates value)."""

    user_id: str
    version: int
    ts: float
    updated_at: float
    entities: list[dict[str, Any]]
    seen_items: list[str]

    def titles(self) -> list[str]:
        """Entity titles by descending score (the EmbedMe input order)."""
        ranked = sorted(self.entities, key=lambda e: -float(e.get("score", 0.0)))
        return [str(e.get("title") or e.get("id") or "") for e in ranked]


def parse_record(raw: bytes, key_user: str | None = None) -> UserRecord:
    """Validate a mekb-updates value; BadRecord says what is wrong."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRecord("not a JSON object")
    user_id = obj.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise BadRecord("user_id missing")
    if key_user is not None and key_user != user_id:
        raise BadRecord(f"key {key_user!r} differs from user_id {user_id!r}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise BadRecord("version must be a non-negative integer")
    entities = obj.get("entities") or []
    if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
        raise BadRecord("entities must be a list of objects")
    seen = obj.get("seen_items") or []
    if not isinstance(seen, list):
        raise BadRecord("seen_items must be a list")
    try:
        ts = float(obj.get("ts") or 0.0)
        updated_at = float(obj.get("updated_at") or 0.0)
    except (TypeError, ValueError):
        raise BadRecord("ts/updated_at must be numbers") from None
    return UserRecord(user_id, version, ts, updated_at, entities, [str(i) for i in seen])


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
        latest: dict[str, int] = {}  # versions written earlier in this same batch
        next_offsets: dict[int, int] = {}
        for rec in records:
            next_offsets[rec.partition] = max(next_offsets.get(rec.partition, 0), rec.offset + 1)
            key_user = rec.key.decode("utf-8", "replace") if rec.key else None
            if key_user is not None and len(rec.key or b"") > MAX_USER_ID_BYTES:
                result.bad += 1
                continue
            if rec.value is None:  # tombstone: the user was deleted upstream
                if key_user is not None:
                    writes[USER + key_user.encode()] = None
                    latest.pop(key_user, None)
                    result.deleted.append(key_user)
                continue
            try:
                parsed = parse_record(rec.value, key_user)
            except BadRecord as exc:
                logger.warning("mekb-updates p%d@%d: bad record: %s", rec.partition,
                               rec.offset, exc)
                result.bad += 1
                continue
            current = latest.get(parsed.user_id)
            if current is None:
                stored = self._db.get(USER + parsed.user_id.encode())
                if stored is not None and USER + parsed.user_id.encode() not in writes:
                    try:
                        current = parse_record(stored).version
                    except BadRecord:
                        current = None
            if current is not None and parsed.version <= current:
                result.older += 1
                continue
            latest[parsed.user_id] = parsed.version
            writes[USER + parsed.user_id.encode()] = rec.value
            result.applied.append(parsed)
        for partition, offset in next_offsets.items():
            writes[_offset_key(partition)] = struct.pack(">q", offset)
        self._write(writes)
        # a user updated twice in one batch is reported once, with its newest record
        newest = {r.user_id: r for r in result.applied}
        result.applied = list(newest.values())
        return result

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
