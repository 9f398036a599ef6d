"""`mekb serve` as a real process: real broker, real exported EmbedMe bundles, real HTTP.

Checked here (issue 7): an update on mekb-updates changes that user's embedding within
the freshness target; a hot swap under concurrent requests gives no failed request and
no mixed-version response; a restart recovers the replica (and an empty replica
rebuilds from the topic); malformed requests get 4xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mekb.broker import EmbeddedBroker, free_port
from mekb.registry import Registry, announce
from mekb.scoring import sequence_text
from mekb.settings import Settings
from mekb.topics import create_topics
from mekb_client import (
    AsyncClient,
    Client,
    InvalidRequest,
    ModelVersionMismatch,
    NotFound,
    Retry,
    Unauthorized,
    UserEmbedding,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = ["m1", "m2", "m3", "m4", "m5", "b1", "b2", "b3"]
DOMAINS = ["movies"] * 5 + ["books"] * 3
V1, V2 = "20261124T100000Z-5e5501", "20261124T110000Z-5e5502"
KEY, ADMIN = "it-user-key", "it-admin-key"
FRESHNESS_TARGET_S = 2.0
USERS = {
    "alice": ["Star Wars", "Harrison Ford", "George Lucas"],
    "bob": ["Pride and Prejudice", "Jane Austen"],
    "carol": ["The Godfather", "Al Pacino", "Francis Ford Coppola", "crime film"],
}


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two full versions exported with trainer.export.write_bundle (different weights)."""
    import torch

    from trainer.export import write_bundle
    from trainer.model import EmbedMe, EmbedMeConfig

    root = tmp_path_factory.mktemp("serving-it")
    reg = Registry(root / "registry")
    for seed, version in ((1, V1), (2, V2)):
        torch.manual_seed(seed)
        model = EmbedMe(EmbedMeConfig(max_tokens=32), ITEMS, DOMAINS).eval()
        bundle = write_bundle(model, root / f"bundle-{seed}", version=version)
        reg.publish(bundle, move=True)
    reg.activate(V1)
    return reg.root


class Expected:
    """Reference embeddings straight from ONNX Runtime on the bundle (no server code)."""

    def __init__(self, registry_dir: Path) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.user: dict[str, dict[str, np.ndarray]] = {}
        self.items: dict[str, np.ndarray] = {}
        reg = Registry(registry_dir)
        for version in (V1, V2):
            path = reg.get(version).path
            max_tokens = reg.get(version).manifest["max_tokens"]
            tok = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
            sess = ort.InferenceSession(str(path / "user_tower.onnx"),
                                        providers=["CPUExecutionProvider"])
            out = {}
            for user, titles in {**USERS, "": []}.items():
                enc = tok([sequence_text(titles, max_tokens)], truncation=True,
                          max_length=max_tokens, return_tensors="np")
                out[user] = sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                            "attention_mask": enc["attention_mask"].astype(
                                                np.int64)})[0][0]
            self.user[version] = out
            self.items[version] = np.load(path / "items.npy")

    def check(self, body: dict[str, Any] | UserEmbedding, user: str) -> None:
        if isinstance(body, UserEmbedding):  # mekb_client's typed answer
            body = dataclasses.asdict(body)
        version = body["model_version"]
        assert version in (V1, V2), body
        np.testing.assert_allclose(body["embedding"], self.user[version][user],
                                   rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def expected(registry_dir: Path) -> Expected:
    return Expected(registry_dir)


class ServeProcess:
    def __init__(self, broker: EmbeddedBroker, data_dir: Path, registry_dir: Path,
                 prefix: str, log: Path) -> None:
        self.port = free_port()
        self.settings = Settings(bootstrap_servers=broker.bootstrap_servers,
                                 broker_flavor="tansu", topic_prefix=prefix, partitions=2,
                                 data_dir=data_dir, registry_dir=registry_dir)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
        self.env.update({
            "MEKB_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "MEKB_BROKER_FLAVOR": "tansu", "MEKB_TOPIC_PREFIX": prefix,
            "MEKB_PARTITIONS": "2", "MEKB_DATA_DIR": str(data_dir),
            "MEKB_REGISTRY_DIR": str(registry_dir), "MEKB_SERVING_PORT": str(self.port),
            "MEKB_SERVING_API_KEYS": f"other-key,{KEY}", "MEKB_SERVING_ADMIN_KEY": ADMIN,
            "MEKB_SERVING_REGISTRY_POLL_S": "1", "MEKB_SERVING_DEVICE": "cpu",
        })
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, headers={"X-API-Key": KEY}, timeout=30)
        # mekb_client, without retries: a failed request fails the test, as with httpx
        self.api = Client(self.url, KEY, timeout=30, retry=Retry(attempts=1))

    def start(self, timeout_s: float = 90.0) -> ServeProcess:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mekb.cli.main", "serve"], env=self.env,
                stdout=fh, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.client.get("/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not ready:\n" + self.log.read_text()[-3000:])

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def produce(self, user: str, version: int, titles: list[str],
                seen: list[str] = ()) -> float:
        from kafka import KafkaProducer

        from mekb.kafka_config import kafka_python_config

        ts = time.time()
        producer = KafkaProducer(**kafka_python_config(self.settings))
        value = {"v": 1, "user_id": user, "version": version, "ts": ts, "updated_at": ts,
                 "n_users": 3, "seen_items": list(seen),
                 "entities": [{"id": f"kb:{t}", "title": t, "k": 1.0,
                               "score": 1.0 / (n + 1)} for n, t in enumerate(titles)]}
        producer.send(self.settings.topic("mekb-updates"), key=user.encode(),
                      value=json.dumps(value).encode())
        producer.flush()
        producer.close()
        return ts

    def wait_version(self, user: str, version: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.api.embedding(user)
            if body.mekb_version == version or time.monotonic() > deadline:
                return dataclasses.asdict(body)
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(broker: EmbeddedBroker, registry_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    base = tmp_path_factory.mktemp("serve")
    proc = ServeProcess(broker, base / "data", registry_dir, "tserve1-", base / "serve.log")
    create_topics(proc.settings)
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def test_update_changes_embedding_within_freshness_target(server: ServeProcess,
                                                          expected: Expected) -> None:
    cold = server.api.embedding("alice")
    assert cold.cold_start is True and cold.mekb_version == 0
    expected.check(cold, "")
    for version, user_titles in ((1, "alice"), (2, "carol")):
        start = time.monotonic()
        server.produce("alice", version, USERS[user_titles], seen=["m1"])
        body = server.wait_version("alice", version, timeout_s=10)
        elapsed = time.monotonic() - start
        assert body["mekb_version"] == version and body["cold_start"] is False
        assert elapsed < FRESHNESS_TARGET_S, f"update visible after {elapsed:.2f}s"
        expected.check(body, user_titles)
    mekb = server.api.mekb("alice")
    assert [e.title for e in mekb.entities] == USERS["carol"]
    recs = server.api.recommendations("alice", domain="movies", k=10)
    assert {i.item_id for i in recs.items} == {"m2", "m3", "m4", "m5"}
    metrics = server.client.get("/metrics").text
    assert "mekb_serving_processing_lag_seconds_count" in metrics
    assert 'mekb_serving_replica_records_total{outcome="applied"}' in metrics


def test_hot_swap_under_concurrent_requests(server: ServeProcess, expected: Expected,
                                            registry_dir: Path) -> None:
    for n, user in enumerate(("bob", "carol")):
        server.produce(user, 1 + n, USERS[user])
    for n, user in enumerate(("bob", "carol")):
        assert server.wait_version(user, 1 + n, 10)["mekb_version"] == 1 + n
    failures: list[str] = []
    seen_versions: set[str] = set()
    stop = threading.Event()
    reg = Registry(registry_dir)

    def hammer(user: str) -> None:
        client = httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=30)
        while not stop.is_set():
            try:
                emb = client.get(f"/v1/users/{user}/embedding")
                rec = client.get(f"/v1/users/{user}/recommendations",
                                 params={"domain": "books", "k": 3})
                if emb.status_code != 200 or rec.status_code != 200:
                    failures.append(f"{emb.status_code} {rec.status_code} {rec.text[:200]}")
                    continue
                body = emb.json()
                expected.check(body, user)
                seen_versions.add(body["model_version"])
                # recommendations: user and item embeddings of the SAME version
                r = rec.json()
                v = r["model_version"]
                items = expected.items[v]
                for item in r["items"]:
                    score = float(items[ITEMS.index(item["item_id"])] @ expected.user[v][user])
                    assert abs(score - item["score"]) < 1e-3 * max(1.0, abs(score)), (v, item)
            except (AssertionError, httpx.HTTPError) as exc:
                failures.append(repr(exc)[:300])
        client.close()

    threads = [threading.Thread(target=hammer, args=(u,)) for u in ("bob", "carol", "bob")]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        # 1) the trainer's path: registry ACTIVE + a model-updates event
        reg.activate(V2)
        announce(server.settings, V2)
        deadline = time.monotonic() + 60
        while server.client.get("/v1/models").json()["serving"] != V2:
            assert time.monotonic() < deadline, "V2 never became active"
            time.sleep(0.1)
        time.sleep(1.0)
        # 2) rollback through the admin endpoint
        resp = server.client.post("/v1/models/rollback", headers={"X-API-Key": ADMIN})
        assert resp.status_code == 200 and resp.json()["active"] == V1, resp.text
        assert reg.active_version() == V1
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert seen_versions == {V1, V2}
    metrics = server.client.get("/metrics").text
    assert f'version="{V1}"' in metrics and "mekb_serving_model_swaps_total 3.0" in metrics


def test_malformed_requests_get_4xx(server: ServeProcess) -> None:
    c = server.client
    bad = [
        c.get("/v1/users/x/embedding", headers={"X-API-Key": "nope"}),
        c.post("/v1/models/whatever/activate"),  # user key on an admin endpoint
        c.post("/v1/users/embeddings", content=b"{", headers={"content-type":
                                                              "application/json"}),
        c.post("/v1/users/embeddings", json={"user_ids": ["a"] * 1000}),
        c.get("/v1/users/x/recommendations", params={"domain": "movies", "k": -1}),
        c.get("/v1/users/x/recommendations", params={"domain": "nope"}),
        c.get("/v1/items/embeddings", params={"version": "../../etc"}),
        c.post("/v1/models/20990101T000000Z-000000/activate", headers={"X-API-Key": ADMIN}),
    ]
    codes = [r.status_code for r in bad]
    assert codes == [401, 401, 422, 422, 422, 404, 422, 404], codes
    for r in bad:
        assert "Traceback" not in r.text and isinstance(r.json()["detail"], str)
    assert c.get("/openapi.json").json()["paths"]["/v1/users/{user_id}/embedding"]


def test_client_errors_batches_and_pinning(server: ServeProcess, expected: Expected) -> None:
    """mekb_client against the real service: typed errors (never retried: one attempt),
    a batch split over requests and all of one version, version pinning, async."""
    api = Client(server.url, KEY, batch_size=2)
    with pytest.raises(Unauthorized) as denied:
        Client(server.url, "wrong-key").embedding("alice")
    assert denied.value.attempts == 1
    with pytest.raises(NotFound, match="unknown domain 'nope'"):
        api.recommendations("alice", domain="nope")
    with pytest.raises(InvalidRequest, match="k: at most"):
        api.recommendations("alice", domain="movies", k=5000)
    with pytest.raises(NotFound, match="has no MeKB"):
        api.mekb("nobody-at-all")
    with pytest.raises(Unauthorized):
        api.unpin()  # an admin call with a user key

    serving = api.models().serving
    other = V2 if serving == V1 else V1
    batch = Client(server.url, KEY, batch_size=2, model_version=serving).embeddings(
        ["alice", "bob", "carol", "nobody"])
    assert batch.model_version == serving and len(batch.embeddings) == 4
    assert {e.model_version for e in batch.embeddings} == {serving}
    expected.check(batch.by_user()["nobody"], "")
    pinned = Client(server.url, KEY, model_version=other)
    with pytest.raises(ModelVersionMismatch, match=f"pinned to {other}") as err:
        pinned.embedding("alice")
    assert err.value.got == serving
    # where the API takes a version, the pinned one is asked for and answered
    items = pinned.item_embeddings("books")
    assert items.model_version == other and items.item_ids == ["b1", "b2", "b3"]
    np.testing.assert_allclose(items.embeddings, expected.items[other][5:], rtol=1e-5)

    async def both() -> list[UserEmbedding]:
        async with AsyncClient(server.url, KEY, model_version=serving) as client:
            return list(await asyncio.gather(client.embedding("bob"),
                                             client.embedding("nobody")))

    bob, nobody = asyncio.run(both())
    assert bob.model_version == nobody.model_version == serving
    expected.check(nobody, "")


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        return super().handle_request(request)


def test_client_retries_until_the_service_is_up(
    broker: EmbeddedBroker, registry_dir: Path, tmp_path: Path, expected: Expected
) -> None:
    """A call made before `mekb serve` listens is retried with backoff (connection
    refused; 503 too, should it arrive before a model is loaded) and answers once the
    service is up."""
    proc = ServeProcess(broker, tmp_path / "data", registry_dir, "tserve3-",
                        tmp_path / "serve.log")
    create_topics(proc.settings)
    transport = CountingTransport()
    api = Client(proc.url, KEY, transport=transport,
                 retry=Retry(attempts=400, backoff_s=0.05, backoff_max_s=0.25))
    answers: list[UserEmbedding | BaseException] = []

    def call() -> None:
        try:
            answers.append(api.embedding("zoe"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            answers.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)  # nothing listens yet: refused, retried
    proc.start()
    try:
        caller.join(60)
        assert answers and isinstance(answers[0], UserEmbedding), answers
        assert transport.tries >= 3  # several refused tries before the answer
        expected.check(answers[0], "")
    finally:
        proc.stop()


def test_restart_recovers_replica_and_rebuilds_from_topic(
    broker: EmbeddedBroker, registry_dir: Path, tmp_path: Path, expected: Expected
) -> None:
    proc = ServeProcess(broker, tmp_path / "data", registry_dir, "tserve2-",
                        tmp_path / "serve.log")
    create_topics(proc.settings)
    proc.start()
    try:
        proc.produce("dave", 1, USERS["bob"])
        proc.produce("dave", 2, USERS["alice"], seen=["b1"])
        assert proc.wait_version("dave", 2, 10)["mekb_version"] == 2
    finally:
        assert proc.stop() == 0
    # 1) restart on the same replica but a topic that is now EMPTY: the user can only
    #    come from the persisted RocksDB replica
    again = ServeProcess(broker, tmp_path / "data", registry_dir, "tserve2-empty-",
                         tmp_path / "serve2.log")
    create_topics(again.settings)
    again.start()
    try:
        body = again.client.get("/v1/users/dave/embedding").json()
        assert body["mekb_version"] == 2 and body["cold_start"] is False
        expected.check(body, "alice")
    finally:
        again.stop()
    # 2) a fresh replica directory rebuilds from the compacted topic before it is ready
    rebuilt = ServeProcess(broker, tmp_path / "data-new", registry_dir, "tserve2-",
                           tmp_path / "serve3.log")
    rebuilt.start()
    try:
        body = rebuilt.client.get("/v1/users/dave/embedding").json()
        assert body["mekb_version"] == 2
        assert rebuilt.client.get("/v1/users/dave/mekb").json()["seen_items"] == ["b1"]
    finally:
        rebuilt.stop()
