"""Sharded serving through the real path (issue 19): a real broker, a real `mekb worker`
building MeKBs from produced interactions, and three real `mekb serve` processes — one
unsharded, shard 0/2 and shard 1/2. Each shard answers only its share (421 naming the
owner for the others), together they answer every user, with the embeddings of the
unsharded replica, and the routing rule of serving/sharding.py names the partition the
worker really wrote each user's mekb-updates record to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mekb.broker import free_port
from mekb.registry import Registry
from mekb.settings import Settings
from mekb.topics import create_topics
from mekb_client import Client, Retry, ShardRouter, WrongShard
from serving.sharding import partition_for, shard_for
from serving.testing import write_tiny_bundle
from streams.synthetic import alias_rows, generate
from tests.integration.streams_helpers import Worker, produce, read_topic
from tests.integration.system_helpers import Process, child_env, http, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
VERSION = "20261130T020000Z-5a4d01"


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, set[str], dict]]:
    """Topics with 4 partitions, MeKBs of ~60 users written by a real worker."""
    from linker.alias_table import AliasTable

    s = Settings(**{**settings.model_dump(), "partitions": PARTITIONS})
    create_topics(s)
    alias = tmp_path / "alias"
    AliasTable.build(alias, alias_rows(60)).close()
    log = generate(n_users=60, n_items=40, n_events=400, n_entities=60, seed=3)
    produce(s, "items", [(str(i["item_id"]).encode(), json.dumps(i).encode())
                         for i in log.items])
    produce(s, "interactions", list(zip(log.keys, log.interactions, strict=True)))
    worker = Worker(s, alias, "shards", tmp_path / "worker.log")
    try:
        users = {str(e["user_id"]) for e in log.valid if float(e["rating"]) >= 4.0}
        written: dict[str, int] = {}

        def all_written() -> bool:
            written.clear()
            for rec in read_topic(s, "mekb-updates", idle_s=0.5):
                if rec.value is not None:
                    written[rec.key.decode()] = rec.partition
            return users <= set(written)

        wait_for(all_written, 120, "every user's mekb-updates record")
    finally:
        worker.stop()
    yield s, users, written


def _serve(s: Settings, registry: Path, tmp: Path, name: str, shard: str | None) -> Process:
    port = free_port()
    env = child_env(
        MEKB_BOOTSTRAP_SERVERS=s.bootstrap_servers, MEKB_BROKER_FLAVOR="tansu",
        MEKB_TOPIC_PREFIX=s.topic_prefix, MEKB_PARTITIONS=PARTITIONS,
        MEKB_DATA_DIR=tmp / name, MEKB_REGISTRY_DIR=registry, MEKB_SERVING_PORT=port,
        MEKB_SERVING_DEVICE="cpu", MEKB_SERVING_INTRA_OP_THREADS=1,
    )
    argv = ["serve"] + (["--shard", shard] if shard else [])
    proc = Process(name, argv, env, tmp)
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return proc


def test_two_shards_answer_their_share_and_together_equal_one_replica(
    world: tuple[Settings, set[str], dict[str, int]], tmp_path: Path,
) -> None:
    s, users, written = world
    reg = Registry(tmp_path / "registry")
    reg.publish(write_tiny_bundle(tmp_path / "bundle", version=VERSION, item_ids=["i0", "i1"],
                                  domains=["action", "drama"]))
    reg.activate(VERSION)
    # The rule names the partition the real producer + worker put each user on.
    assert {u: partition_for(u, PARTITIONS) for u in users} == {u: written[u] for u in users}
    assert {shard_for(p, 2) for p in written.values()} == {0, 1}  # both shards hold users

    procs = [_serve(s, reg.root, tmp_path, name, shard)
             for name, shard in (("one", None), ("s0", "0/2"), ("s1", "1/2"))]
    try:
        for p in procs:
            p.wait_http(f"{p.url}/readyz", timeout_s=120)
        one, s0, s1 = (p.url for p in procs)
        assert http("GET", f"{s0}/healthz")[1]["shard"] == "0/2"
        assert http("GET", f"{s1}/healthz")[1]["shard"] == "1/2"
        assert http("GET", f"{one}/healthz")[1]["shard"] == "0/1"
        answered = {0: set(), 1: set()}
        for user in sorted(users) + ["nobody-1", "nobody-2"]:
            owner = shard_for(partition_for(user, PARTITIONS), 2)
            code, ref = http("GET", f"{one}/v1/users/{user}/embedding")
            assert code == 200, ref
            for index, url in ((0, s0), (1, s1)):
                code, body = http("GET", f"{url}/v1/users/{user}/embedding")
                if index != owner:
                    assert code == 421, body
                    assert body["owners"] == {user: f"{owner}/2"}, body
                    continue
                assert code == 200, body
                answered[index].add(user)
                assert body["mekb_version"] == ref["mekb_version"], (user, body, ref)
                assert body["cold_start"] == ref["cold_start"]
                np.testing.assert_allclose(body["embedding"], ref["embedding"],
                                           rtol=1e-5, atol=1e-6)
                code, mekb = http("GET", f"{url}/v1/users/{user}/mekb")
                assert code == (200 if user in users else 404), mekb
        assert answered[0] | answered[1] == users | {"nobody-1", "nobody-2"}
        assert not answered[0] & answered[1] and answered[0] and answered[1]
        # A batch that mixes shards is refused whole, naming every foreign user's shard.
        mixed = [sorted(answered[0])[0], sorted(answered[1])[0]]
        code, body = http("POST", f"{s0}/v1/users/embeddings", {"user_ids": mixed})
        assert code == 421 and body["owners"] == {mixed[1]: "1/2"}, body
        code, body = http("POST", f"{s0}/v1/users/embeddings", {"user_ids": mixed[:1]})
        assert code == 200, body
        # The Python client: routed batches are answered whole; unrouted, WrongShard.
        router = ShardRouter([s0, s1], partitions=PARTITIONS)
        for url, ids in router.split(sorted(users)).items():
            with Client(url, retry=Retry(attempts=1)) as client:
                got = client.embeddings(ids)
                assert [e.user_id for e in got.embeddings] == ids
        with Client(s0, retry=Retry(attempts=1)) as client, \
                pytest.raises(WrongShard) as wrong:
            client.embeddings(mixed)
        assert wrong.value.owners == {mixed[1]: "1/2"}
    finally:
        for p in procs:
            p.stop()
