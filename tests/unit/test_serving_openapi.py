"""The OpenAPI document tells the truth: every (method, path, status) the API answers is
declared with a schema that the real answer validates against; API-key security
schemes; errors are `{"detail": str}`; /docs and /redoc load only local assets.
Also the HTTP limits and /readyz staleness in-process (the real server: integration
test_serving_limits.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient

from mekb.registry import Registry
from serving.app import ApiConfig, create_app
from serving.testing import write_tiny_bundle
from tests.unit.test_serving_api import (
    ADMIN_KEY,
    DOMAINS,
    ITEMS,
    USER_KEY,
    V1,
    V2,
    Harness,
    _update,
)

Seen = list[tuple[str, str, httpx.Response]]  # (method, path template, response)


class Walker:
    """Calls the API and records every answer by its path template."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.seen: Seen = []

    def __call__(self, method: str, template: str, status: int, *, path: str | None = None,
                 **kwargs: Any) -> httpx.Response:
        resp = self.client.request(method, path or template, **kwargs)
        assert resp.status_code == status, (method, path or template, resp.status_code,
                                            resp.text[:300])
        self.seen.append((method.lower(), template, resp))
        return resp


def check_declared(spec: dict[str, Any], seen: Seen) -> set[tuple[str, str, int]]:
    """Every recorded answer: its status is declared for the operation, with a schema for
    its media type, and the body validates against that schema. Returns what was seen."""
    observed = set()
    for method, template, resp in seen:
        op = spec["paths"][template][method]
        declared = op["responses"].get(str(resp.status_code))
        assert declared is not None, f"{method.upper()} {template} answers " \
            f"{resp.status_code}, declared only {sorted(op['responses'])}"
        media = resp.headers["content-type"].split(";")[0]
        content = declared.get("content", {})
        assert media in content, (method, template, resp.status_code, media, content)
        schema = content[media].get("schema")
        assert schema, f"{method.upper()} {template} {resp.status_code}: empty schema"
        if media == "application/json":
            root = {**schema, "components": spec["components"]}
            jsonschema.validate(resp.json(), root, cls=jsonschema.Draft202012Validator)
        observed.add((method, template, resp.status_code))
    return observed


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("openapi-registry")
    reg = Registry(root / "registry")
    for version, seed in ((V1, 1), (V2, 2)):
        reg.publish(write_tiny_bundle(root / version, version=version, item_ids=ITEMS,
                                      domains=DOMAINS, seed=seed))
    return reg


def _app(registry: Registry, *, admin_key: str | None = ADMIN_KEY) -> Harness:
    h = Harness(registry)
    if admin_key is None:  # a second app, same parts, admin endpoints disabled
        cfg = ApiConfig(api_keys=(USER_KEY,), admin_key=None)
        cfg.extra_startup.append(h.manager.sync)
        h.app = create_app(h.service, h.manager, h.prom, cfg)
    return h


@pytest.fixture
def walk(registry: Registry) -> Iterator[tuple[Harness, Walker]]:
    registry.activate(V1)
    h = _app(registry)
    with TestClient(h.app, headers={"X-API-Key": USER_KEY}) as client:
        yield h, Walker(client)


def test_every_answer_is_declared_with_its_schema(walk, registry: Registry,
                                                  tmp_path: Path) -> None:
    h, call = walk
    admin = {"X-API-Key": ADMIN_KEY}
    h.apply(call.client, _update("w1", 3, ["Alien", "Ridley Scott"], seen=["m1"]))
    emb = "/v1/users/{user_id}/embedding"
    call("GET", emb, 200, path="/v1/users/w1/embedding")
    call("GET", emb, 200, path="/v1/users/nobody/embedding")  # cold start: mekb_ts null
    call("GET", emb, 401, path="/v1/users/w1/embedding", headers={"X-API-Key": "nope"})
    call("GET", emb, 422, path="/v1/users/" + "x" * 300 + "/embedding")
    call("POST", "/v1/users/embeddings", 200, json={"user_ids": ["w1", "zz"]})
    call("POST", "/v1/users/embeddings", 422, json={"user_ids": []})
    call("POST", "/v1/users/embeddings", 422, content=b"{nope",
         headers={"content-type": "application/json"})
    call("POST", "/v1/users/embeddings", 401, json={"user_ids": ["a"]},
         headers={"X-API-Key": "nope"})
    call("POST", "/v1/users/embeddings", 413, content=b"[" * (2 << 20),
         headers={"content-type": "application/json"})
    mekb = "/v1/users/{user_id}/mekb"
    call("GET", mekb, 200, path="/v1/users/w1/mekb")
    call("GET", mekb, 404, path="/v1/users/nobody/mekb")
    recs = "/v1/users/{user_id}/recommendations"
    call("GET", recs, 200, path="/v1/users/w1/recommendations", params={"domain": "movies"})
    call("GET", recs, 404, path="/v1/users/w1/recommendations", params={"domain": "games"})
    call("GET", recs, 422, path="/v1/users/w1/recommendations",
         params={"domain": "movies", "k": 0})
    items = "/v1/items/embeddings"
    call("GET", items, 200)
    call("GET", items, 200, params={"domain": "books", "version": V2})
    call("GET", items, 404, params={"version": "20990101T000000Z-ffffff"})
    call("GET", items, 422, params={"version": "../../etc"})
    call("GET", items, 422, params={"offset": 1 << 64})  # was a 500 (JSON int overflow)
    call("GET", "/v1/models", 200)
    act = "/v1/models/{version}/activate"
    call("POST", act, 401, path=f"/v1/models/{V2}/activate")  # the user key is not admin
    call("POST", act, 404, path="/v1/models/20990101T000000Z-ffffff/activate", headers=admin)
    call("POST", act, 200, path=f"/v1/models/{V2}/activate", headers=admin)
    call("POST", "/v1/models/rollback", 200, headers=admin)
    pin = "/v1/models/{version}/pin"
    call("POST", pin, 200, path=f"/v1/models/{V1}/pin", headers=admin)
    call("GET", "/v1/models", 200)  # with the pin
    call("POST", pin, 404, path="/v1/models/20990101T000000Z-ffffff/pin", headers=admin)
    call("POST", "/v1/models/unpin", 200, headers=admin)
    call("POST", "/v1/models/unpin", 401)
    call("GET", "/healthz", 200)
    call("GET", "/readyz", 200)
    call("GET", "/readyz", 422, params={"allow_stale": "maybe"})
    call("GET", "/metrics", 200)
    # 409: a version whose files no longer match their checksums
    v3 = "20261124T120000Z-cccccc"
    bundle = write_tiny_bundle(tmp_path / v3, version=v3, item_ids=ITEMS, domains=DOMAINS,
                               seed=3)
    registry.publish(bundle)
    (registry.get(v3).path / "items.npy").write_bytes(b"corrupt")
    call("POST", act, 409, path=f"/v1/models/{v3}/activate", headers=admin)
    call("GET", items, 409, params={"version": v3})
    spec = call.client.get("/openapi.json").json()
    observed = check_declared(spec, call.seen)
    statuses = {status for _, _, status in observed}
    assert statuses == {200, 401, 404, 409, 413, 422}


def test_admin_disabled_no_model_and_rollback_refusal_are_declared(registry: Registry,
                                                                   tmp_path: Path) -> None:
    registry.activate(V1)
    h = _app(registry, admin_key=None)
    with TestClient(h.app, headers={"X-API-Key": USER_KEY}) as client:
        call = Walker(client)
        call("POST", "/v1/models/rollback", 403)
        call("POST", "/v1/models/{version}/activate", 403, path=f"/v1/models/{V2}/activate")
        spec = client.get("/openapi.json").json()
        check_declared(spec, call.seen)
    empty = Harness(Registry(tmp_path / "empty"))
    with TestClient(empty.app, headers={"X-API-Key": USER_KEY}) as client:
        call = Walker(client)
        call("GET", "/v1/users/{user_id}/embedding", 503, path="/v1/users/u/embedding")
        call("POST", "/v1/users/embeddings", 503, json={"user_ids": ["u"]})
        call("GET", "/v1/users/{user_id}/recommendations", 503,
             path="/v1/users/u/recommendations", params={"domain": "movies"})
        call("GET", "/v1/items/embeddings", 503)
        call("GET", "/readyz", 503)
        call("POST", "/v1/models/rollback", 409, headers={"X-API-Key": ADMIN_KEY})
        check_declared(client.get("/openapi.json").json(), call.seen)


def test_spec_has_security_schemes_error_shapes_and_no_empty_schemas(walk) -> None:
    _, call = walk
    spec = call.client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["UserKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                  "description": "One of MEKB_SERVING_API_KEYS."}
    assert schemes["AdminKey"]["name"] == "X-API-Key"
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            if path.startswith("/v1/"):
                want = "AdminKey" if "admin" in op["tags"] else "UserKey"
                assert op.get("security") == [{want: []}], where
                assert "401" in op["responses"], where
            else:
                assert "security" not in op, where
            for status, resp in op["responses"].items():
                assert resp.get("content"), (where, status)
                for media, body in resp["content"].items():
                    assert body.get("schema"), (where, status, media)
                    if status.startswith(("4", "5")):
                        assert media == "application/json", (where, status, media)
                    if status.startswith(("4", "5")) and (status, path) != ("503", "/readyz"):
                        assert body["schema"] == {"$ref": "#/components/schemas/ErrorOut"}, \
                            (where, status)
    detail = spec["components"]["schemas"]["ErrorOut"]["properties"]["detail"]
    assert detail["type"] == "string"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(walk, page: str) -> None:
    _, call = walk
    html = call.client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert "http://" not in html.text and "https://" not in html.text and "//cdn" not in html.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    urls += re.findall(r"(?:url|spec-url)=['\"]([^'\"]+)['\"]", html.text)
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = call.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, (url, asset.status_code)


def test_chunked_body_is_cut_at_the_limit_and_auth_comes_first(registry: Registry) -> None:
    registry.activate(V1)
    h = Harness(registry)  # ApiConfig's limit: 1 MiB
    reads = 0

    def body(n_chunks: int) -> Iterator[bytes]:
        nonlocal reads
        for _ in range(n_chunks):
            reads += 1
            yield b" " * 65536

    with TestClient(h.app) as client:
        # no key: refused before a single chunk is pulled from the client
        resp = client.post("/v1/users/embeddings", content=body(1000),
                           headers={"content-type": "application/json"})
        assert resp.status_code == 401 and resp.headers["connection"] == "close"
        assert reads == 0
        # with a key: read up to the limit, then 413 (chunked: no Content-Length to trust)
        resp = client.post("/v1/users/embeddings", content=body(1000),
                           headers={"content-type": "application/json",
                                    "X-API-Key": USER_KEY})
        assert resp.status_code == 413 and "over 1048576 bytes" in resp.json()["detail"]
        # (TestClient itself drains the rest of the generator; the real server does not:
        # tests/integration/test_serving_limits.py)
        # the same size is fine below the limit
        ok = client.post("/v1/users/embeddings", content=b'{"user_ids": ["a"]}' + b" " * 1_000_000,
                         headers={"X-API-Key": USER_KEY, "content-type": "application/json"})
        assert ok.status_code == 200
        text = client.get("/metrics").text
        assert 'code="413",endpoint="/v1/users/embeddings"' in text


def test_readyz_reflects_a_stale_replica(registry: Registry) -> None:
    registry.activate(V1)
    h = Harness(registry)
    h.service.follows_upstream = True
    h.service.upstream_timeout_s = 5.0
    with TestClient(h.app, headers={"X-API-Key": USER_KEY}) as client:
        h.service.upstream_seen_at = time.time()
        fresh = client.get("/readyz")
        assert fresh.status_code == 200 and fresh.json()["replica_stale"] is False
        h.service.upstream_seen_at = time.time() - 60  # the broker went quiet a minute ago
        stale = client.get("/readyz")
        assert stale.status_code == 503
        assert stale.json() == {"ready": False, "model_version": V1,
                                "replica_caught_up": True, "replica_stale": True}
        assert client.get("/v1/users/u/embedding").json()["replica_stale"] is True
        assert "mekb_serving_ready 0.0" in client.get("/metrics").text
        lenient = client.get("/readyz", params={"allow_stale": True})
        assert lenient.status_code == 200 and lenient.json()["replica_stale"] is True
        h.service.upstream_seen_at = time.time()
        assert client.get("/readyz").status_code == 200
        assert "mekb_serving_ready 1.0" in client.get("/metrics").text
