"""mekb_client's retry, error and pinning rules against an in-process transport (the real
service: tests/integration/test_serving_process.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from mekb_client import (
    AsyncClient,
    Client,
    InvalidRequest,
    ModelVersionMismatch,
    NotFound,
    RateLimited,
    Retry,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
)

FAST = Retry(attempts=4, backoff_s=0.001, backoff_max_s=0.01)


def emb(user: str, version: str = "v1") -> dict[str, object]:
    return {"user_id": user, "embedding": [0.5, 0.25], "dim": 2, "model_version": version,
            "mekb_version": 3, "mekb_ts": 10.0, "computed_at": 11.0, "cold_start": False,
            "stale": False, "cached": True, "replica_stale": False, "future_field": 1}


def script(*answers: httpx.Response | Exception) -> tuple[Callable[..., httpx.Response],
                                                          list[httpx.Request]]:
    """A handler giving `answers` in turn (an exception is raised), and the requests seen."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


def client(handler: Callable[..., httpx.Response], **kw: object) -> Client:
    return Client("http://mekb.test", "key", transport=httpx.MockTransport(handler),
                  retry=FAST, **kw)  # type: ignore[arg-type]


def test_retries_connect_errors_5xx_and_429_then_answers() -> None:
    handler, seen = script(httpx.ConnectError("refused"), httpx.Response(503, json={
        "detail": "no model version loaded yet"}), httpx.Response(
        429, json={"detail": "slow down"}, headers={"Retry-After": "0"}),
        httpx.Response(200, json=emb("a/b")))
    with client(handler) as c:
        got = c.embedding("a/b")
    assert got.user_id == "a/b" and got.embedding == [0.5, 0.25] and got.mekb_version == 3
    assert len(seen) == 4
    assert seen[-1].url.raw_path == b"/v1/users/a%2Fb/embedding"  # one path segment
    assert seen[-1].headers["X-API-Key"] == "key"


def test_4xx_is_not_retried_and_raises_by_status() -> None:
    handler, seen = script(httpx.Response(404, json={"detail": "user 'x' has no MeKB"}))
    with client(handler) as c, pytest.raises(NotFound) as err:
        c.mekb("x")
    assert len(seen) == 1 and err.value.status == 404 and "no MeKB" in str(err.value)
    handler, seen = script(httpx.Response(401, json={"detail": "missing or invalid X-API-Key"}))
    with client(handler) as c, pytest.raises(Unauthorized):
        c.models()
    assert len(seen) == 1


def test_gives_up_after_the_attempts() -> None:
    handler, seen = script(*[httpx.ConnectError("refused")] * 4)
    with client(handler) as c, pytest.raises(TransportError) as err:
        c.embedding("u")
    assert err.value.attempts == 4 and len(seen) == 4
    handler, seen = script(*[httpx.Response(503, json={"detail": "down"})] * 4)
    with client(handler) as c, pytest.raises(ServiceUnavailable) as unavailable:
        c.embedding("u")
    assert unavailable.value.attempts == 4 and len(seen) == 4
    handler, seen = script(*[httpx.Response(429, json={"detail": "slow"})] * 4)
    with client(handler) as c, pytest.raises(RateLimited):
        c.embedding("u")


def test_rollback_is_not_repeated_after_it_may_have_happened() -> None:
    handler, seen = script(httpx.Response(500, json={"detail": "boom"}))
    with client(handler, admin_key="admin") as c, pytest.raises(ServerError):
        c.rollback()
    assert len(seen) == 1 and seen[0].headers["X-API-Key"] == "admin"
    handler, seen = script(httpx.ConnectError("refused"), httpx.Response(
        200, json={"active": "v0", "kind": "full"}))
    with client(handler, admin_key="admin") as c:  # never sent: safe to repeat
        assert c.rollback()["active"] == "v0"


def test_readyz_503_is_an_answer() -> None:
    handler, seen = script(httpx.Response(503, json={
        "ready": False, "model_version": None, "replica_caught_up": False,
        "replica_stale": False}))
    with client(handler) as c:
        assert c.ready().ready is False
    assert len(seen) == 1


def test_pinned_version_mismatch_fails_loudly() -> None:
    handler, _ = script(httpx.Response(200, json=emb("u", "v2")))
    with client(handler, model_version="v1") as c, pytest.raises(ModelVersionMismatch) as err:
        c.embedding("u")
    assert err.value.expected == "v1" and err.value.got == "v2" and "pinned to v1" in str(err.value)


def batch(users: list[str], version: str) -> httpx.Response:
    return httpx.Response(200, json={"model_version": version, "dim": 2,
                                     "embeddings": [emb(u, version) for u in users]})


def test_batches_are_split_and_of_one_version() -> None:
    # 5 ids in requests of 2: the version switched after the first request, so the whole
    # batch is asked again and comes back of one version.
    handler, seen = script(batch(["a", "b"], "v1"), batch(["c", "d"], "v2"), batch(["e"], "v2"),
                           batch(["a", "b"], "v2"), batch(["c", "d"], "v2"), batch(["e"], "v2"))
    with client(handler, batch_size=2) as c:
        got = c.embeddings(["a", "b", "c", "d", "e"])
    assert got.model_version == "v2" and [e.user_id for e in got.embeddings] == list("abcde")
    assert [json.loads(r.content)["user_ids"] for r in seen[:3]] == [["a", "b"], ["c", "d"],
                                                                      ["e"]]
    assert len(seen) == 6


def test_async_client_same_rules() -> None:
    handler, seen = script(httpx.ConnectError("refused"), httpx.Response(
        200, json={"user_id": "u", "domain": "d", "model_version": "v1", "mekb_version": 1,
                   "cold_start": False, "items": [{"item_id": "i1", "score": 0.5}]}),
        httpx.Response(422, json={"detail": "k: at most 1000, got 5000"}))

    async def run() -> None:
        async with AsyncClient("http://mekb.test", "key", model_version="v1", retry=FAST,
                               transport=httpx.MockTransport(handler)) as c:
            recs = await c.recommendations("u", "d", k=3)
            assert recs.items[0].item_id == "i1" and recs.model_version == "v1"
            with pytest.raises(InvalidRequest) as err:
                await c.recommendations("u", "d", k=5000)
            assert err.value.status == 422 and "at most 1000" in err.value.detail

    asyncio.run(run())
    assert len(seen) == 3 and seen[1].url.params["k"] == "3"
