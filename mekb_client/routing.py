"""Routing to sharded serving replicas (`mekb serve --shard i/n`, docs/contracts.md).

A sharded replica answers only the users of its share and 421 (`WrongShard`, naming the
owner) for the others. `ShardRouter` applies the same rule on the client side, so every
call goes to the replica that holds the user: the rule is serving.sharding's, imported
rather than copied (a pure-Python module without dependencies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from serving.sharding import partition_for, shard_for


class ShardRouter:
    """`urls[i]` is the replica started with `--shard i/len(urls)`; `partitions` is the
    partition count of the `interactions` / `mekb-updates` topics (MEKB_PARTITIONS)."""

    def __init__(self, urls: Sequence[str], partitions: int) -> None:
        if not urls:
            raise ValueError("ShardRouter needs at least one replica URL")
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.urls = list(urls)
        self.partitions = partitions

    def shard_of(self, user_id: str) -> int:
        return shard_for(partition_for(user_id, self.partitions), len(self.urls))

    def url_for(self, user_id: str) -> str:
        return self.urls[self.shard_of(user_id)]

    def split(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """The ids by the URL of the replica that holds them (order kept within each):
        one batch request per replica."""
        out: dict[str, list[str]] = {}
        for user in user_ids:
            out.setdefault(self.url_for(user), []).append(user)
        return out
