"""Serving's side of a user deletion, in-process: the admin endpoint that publishes it
(its answers as declared in the OpenAPI document), and the mekb-updates tombstone that
drops the replica entry and the cached embeddings (a returning user's MeKB starts
again at version 0 and must not get the old embedding of that version)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from mekb.erasure import Published, delete_event
from mekb.registry import Registry
from serving.app import ApiConfig, create_app
from serving.replica import Incoming
from tests.unit.test_serving_api import (  # noqa: F401 - the fixture
    ADMIN_KEY,
    USER_KEY,
    V1,
    Harness,
    _update,
    registry,
)
from tests.unit.test_serving_openapi import Walker, check_declared

ADMIN = {"X-API-Key": ADMIN_KEY}


def test_delete_endpoint_publishes_and_answers_as_declared(registry: Registry) -> None:  # noqa: F811
    registry.activate(V1)
    published: list[str] = []

    async def delete_user(user_id: str) -> Published:
        event = delete_event(user_id)  # the contract's validation, as mekb.erasure does
        published.append(event.user_id)
        return Published(event.user_id, 1, 41)

    for deleter in (delete_user, None):
        h = Harness(registry)
        cfg = ApiConfig(api_keys=(USER_KEY,), admin_key=ADMIN_KEY, delete_user=deleter)
        cfg.extra_startup.append(h.manager.sync)
        app = create_app(h.service, h.manager, h.prom, cfg)
        with TestClient(app, headers={"X-API-Key": USER_KEY}) as client:
            call = Walker(client)
            path = "/v1/users/{user_id}"
            call("DELETE", path, 401, path="/v1/users/u1")  # the user key is not admin
            if deleter is None:  # serving without Kafka
                call("DELETE", path, 503, path="/v1/users/u1", headers=ADMIN)
            else:
                answer = call("DELETE", path, 202, path="/v1/users/u1", headers=ADMIN)
                assert answer.json() == {"user_id": "u1", "status": "accepted",
                                         "partition": 1, "offset": 41}
                call("DELETE", path, 422, path="/v1/users/a%01b", headers=ADMIN)
                assert published == ["u1"]
            check_declared(client.get("/openapi.json").json(), call.seen)


def test_tombstone_drops_the_replica_entry_and_the_cached_embedding(
    registry: Registry, tmp_path: Path  # noqa: F811
) -> None:
    registry.activate(V1)
    h = Harness(registry)
    with TestClient(h.app, headers={"X-API-Key": USER_KEY}) as client:
        h.apply(client, _update("u1", 1, ["Star Wars", "Harrison Ford"]))
        old = client.get("/v1/users/u1/embedding").json()
        assert client.get("/v1/users/u1/embedding").json()["cached"] is True
        result = h.replica.apply([Incoming(0, h.offset, b"u1", None)])
        h.offset += 1
        client.portal.call(h.service.on_applied, result)
        assert h.replica.get("u1") is None
        assert client.get("/v1/users/u1/mekb").status_code == 404
        assert client.get("/v1/users/u1/embedding").json()["cold_start"] is True
        h.apply(client, _update("u1", 1, ["Pride and Prejudice"]))  # back: version 1 again
        new = client.get("/v1/users/u1/embedding").json()
        assert new["mekb_version"] == 1 and new["embedding"] != old["embedding"]


def test_an_embedding_computed_across_an_erasure_is_not_cached() -> None:
    """The race: a computation of the erased MeKB finishes after the tombstone. Its
    put must be dropped — else the returning user (versions again from 0) would get
    it, or see their new, lower versions refused as older."""
    import numpy as np

    from serving.cache import CachedEmbedding, EmbeddingCache

    cache = EmbeddingCache(10)
    since = cache.epoch  # the computation of u1's MeKB version 7 starts
    cache.forget("u1")  # the tombstone arrives meanwhile
    cache.put("u1", CachedEmbedding(7, "t", np.ones(2), 0.0), since)
    assert cache.get_any("u1", "t") is None
    cache.put("u2", CachedEmbedding(3, "t", np.ones(2), 0.0), since)  # others unaffected
    assert cache.get("u2", 3, "t") is not None
    started_after = cache.epoch
    cache.put("u1", CachedEmbedding(0, "t", np.zeros(2), 0.0), started_after)
    assert cache.get("u1", 0, "t") is not None  # the new MeKB caches normally
    cache.settle()  # nothing in flight: the erasure record is dropped, bounded memory
    cache.put("u1", CachedEmbedding(1, "t", np.zeros(2), 0.0), since)
    assert cache.get("u1", 1, "t") is not None
