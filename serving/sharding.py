"""Which serving replica holds a user: the routing rule of sharded serving.

A user's events are keyed by the user id, so Kafka's default partitioner puts them on
partition `murmur2(user_id) & 0x7fffffff % partitions` of `interactions` (mekb produce,
mekb backfill, every Java/kafka-python/aiokafka producer), and the worker writes the
user's `mekb-updates` record to that same partition number (co-partitioned topics).
A replica started with `--shard i/n` (MEKB_SERVING_SHARD) follows only the partitions
p with p % n == i, so it holds exactly the users whose partition maps to shard i.

This module is the whole rule, pure Python with no dependency: a client (or a router)
imports it or copies the three functions. docs/contracts.md states the same rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's Utils.murmur2, seed 0x9747b28c), as a signed
    32-bit int like Java's; the partitioner masks it with 0x7fffffff."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    extra = length % 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(user_id: str, partitions: int) -> int:
    """The partition of a user's events and of its mekb-updates record."""
    return (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


def shard_for(partition: int, shards: int) -> int:
    """The serving shard that follows `partition` when there are `shards` shards."""
    return partition % shards


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count); 0/1 is the unsharded replica."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        found = SHARD_RE.match(text or "")
        if not found:
            raise ValueError(f"shard must be i/n (e.g. 0/2), not {text!r}")
        index, count = int(found.group(1)), int(found.group(2))
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard {text!r}: need 0 <= i < n and n >= 1")
        return cls(index, count)

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns_partition(self, partition: int) -> bool:
        return shard_for(partition, self.count) == self.index


class ShardMap:
    """A replica's shard plus the partition count of mekb-updates as the follower found
    it (the configured MEKB_PARTITIONS until then): the routing rule needs the topic's
    real count, which is what the producer hashed with."""

    def __init__(self, shard: Shard, partitions: int) -> None:
        self.shard = shard
        self.partitions = partitions

    def foreign(self, user_ids: list[str]) -> dict[str, object] | None:
        """None when this replica holds every id; else the 421 body naming the owners."""
        if not self.shard.sharded:
            return None
        owners: dict[str, str] = {}
        for user in user_ids:
            part = partition_for(user, self.partitions)
            if not self.shard.owns_partition(part):
                owners[user] = str(Shard(shard_for(part, self.shard.count), self.shard.count))
        if not owners:
            return None
        first, owner = next(iter(owners.items()))
        return {
            "detail": f"user {first!r} is served by shard {owner}, this replica is shard "
                      f"{self.shard} (partition = murmur2(user_id) % {self.partitions}, "
                      f"shard = partition % {self.shard.count}; docs/contracts.md)",
            "shard": str(self.shard), "partitions": self.partitions, "owners": owners,
        }
