"""The admin API equivalent of `mekb models pin/unpin`, in-process (same harness as
test_serving_api: a tiny real ONNX bundle per version, a real registry)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from mekb.registry import Registry
from tests.unit.test_serving_api import ADMIN_KEY, USER_KEY, V1, V2, Harness, _update, registry

__all__ = ["registry"]  # the module-scoped fixture: two published versions, V1 active


def test_admin_pin_holds_a_version_and_unpin_releases_it(registry: Registry) -> None:
    registry.activate(V1)
    h = Harness(registry)
    admin = {"X-API-Key": ADMIN_KEY}
    with TestClient(h.app, headers={"X-API-Key": USER_KEY}) as client:
        h.apply(client, _update("s1", 1, ["Dune"]))
        assert client.post(f"/v1/models/{V2}/pin").status_code == 401  # user key: no
        resp = client.post(f"/v1/models/{V2}/pin", headers=admin)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["active"] == V2 and body["pinned"]["version"] == V2
        assert body["pinned"]["reason"] == "pin"
        # pinning loaded and swapped the model here, and moved the registry's pointer
        assert client.get("/v1/users/s1/embedding").json()["model_version"] == V2
        assert registry.active_version() == V2
        # what the trainer does next: its new version stays inactive
        assert registry.promote(V1) is False and registry.active_version() == V2
        models = client.get("/v1/models").json()
        assert models["pinned"]["version"] == V2 and models["held"] == [V1]
        missing = client.post("/v1/models/20990101T000000Z-ffffff/pin", headers=admin)
        assert missing.status_code == 404 and registry.pinned().version == V2  # type: ignore[union-attr]

        released = client.post("/v1/models/unpin", headers=admin)
        assert released.status_code == 200 and released.json() == {"unpinned": V2}
        assert client.post("/v1/models/unpin", headers=admin).json() == {"unpinned": None}
        assert client.get("/v1/models").json()["pinned"] is None
        assert registry.promote(V1) is True
