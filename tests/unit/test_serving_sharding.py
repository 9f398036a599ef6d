"""The routing rule of sharded serving (serving/sharding.py) against Kafka's own
partitioner: Java's murmur2 test vectors and the partitioners of the Python clients."""

from __future__ import annotations

import random

import pytest

from serving.sharding import Shard, ShardMap, murmur2, partition_for, shard_for


def test_murmur2_matches_the_java_client_vectors() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_partition_for_is_the_default_partitioner_of_every_python_client() -> None:
    from aiokafka.partitioner import DefaultPartitioner
    from kafka.partitioner.default import murmur2 as kafka_python_murmur2

    rng = random.Random(4)
    for _ in range(2000):
        user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzé0123456789-_")
                       for _ in range(rng.randrange(1, 30)))
        n = rng.choice((1, 2, 3, 4, 12, 64, 1024))
        parts = list(range(n))
        key = user.encode()
        assert partition_for(user, n) == DefaultPartitioner.__call__(key, parts, parts)
        assert partition_for(user, n) == (kafka_python_murmur2(key) & 0x7FFFFFFF) % n


def test_shard_parse_and_ownership() -> None:
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard.parse(" 0 / 2 ")) == "0/2"
    assert not Shard.parse("0/1").sharded
    for bad in ("2/2", "x", "1/0", "-1/2", ""):
        with pytest.raises(ValueError):
            Shard.parse(bad)
    assert [p for p in range(8) if Shard(1, 3).owns_partition(p)] == [1, 4, 7]
    assert shard_for(7, 3) == 1


def test_shard_map_names_the_owner_of_every_foreign_user() -> None:
    users = [f"u{i}" for i in range(200)]
    maps = [ShardMap(Shard(i, 2), 4) for i in range(2)]
    for user in users:
        owner = shard_for(partition_for(user, 4), 2)
        assert maps[owner].foreign([user]) is None
        body = maps[1 - owner].foreign([user])
        assert body is not None and body["owners"] == {user: f"{owner}/2"}
        assert "docs/contracts.md" in str(body["detail"])
    assert ShardMap(Shard(0, 1), 4).foreign(users) is None  # unsharded: every user


def test_client_router_sends_every_user_where_the_replica_answers_200() -> None:
    """mekb_client's ShardRouter agrees with each replica's own decision (ShardMap):
    the replica a user is routed to holds them, every other replica refuses them."""
    from mekb_client import ShardRouter

    router = ShardRouter(["http://s0", "http://s1", "http://s2"], partitions=8)
    maps = [ShardMap(Shard(i, 3), 8) for i in range(3)]
    rng = random.Random(7)
    users = [f"u{rng.randrange(10**9)}" for _ in range(500)]
    for user in users:
        owner = router.shard_of(user)
        assert router.url_for(user) == f"http://s{owner}"
        for i, shard_map in enumerate(maps):
            assert (shard_map.foreign([user]) is None) == (i == owner)
    split = router.split(users)
    assert sorted(u for ids in split.values() for u in ids) == sorted(users)
    assert all(maps[int(url[-1])].foreign(ids) is None for url, ids in split.items())
    with pytest.raises(ValueError, match="partitions"):
        ShardRouter(["http://s0"], partitions=0)
