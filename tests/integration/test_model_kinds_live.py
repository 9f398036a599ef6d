"""Issue 16 through the real path: the real broker, `mekb worker`, `mekb trainer --kind
entitygraph`, `mekb serve` and `mekb models activate` as processes.

- An interaction of a user changes that user's EntityGraph embedding within seconds end
  to end, and the serving refresher precomputed every updated user within the freshness
  target (0.5 s after the worker's update; none deferred).
- Switching the active version between kinds (EntityGraph -> EmbedMe -> EntityGraph)
  under concurrent requests: no failed request, and every response equals the
  embedding of the version it names, computed independently from that version's
  bundle (so no response mixes versions or kinds). Once after the trainer's own
  versions (switched with `mekb models activate`), and once on its own in well under a
  minute (tiny bundles of both kinds, switched through the admin API of `mekb serve`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mekb.broker import EmbeddedBroker
from mekb.registry import Registry
from mekb.scoring import sequence_text
from mekb.settings import Settings
from mekb.topics import create_topics
from tests.integration.streams_helpers import Worker, latest_mekbs, produce
from tests.integration.test_serving_process import ADMIN, KEY, ServeProcess
from tests.integration.test_stream_training_quality import (  # noqa: F401 (fixture)
    alias,
    interaction_pairs,
    item_pairs,
)
from tests.integration.test_trainer_process import (  # noqa: F401 (fixture)
    Trainer,
    trainer_env,
    tsettings,
    wait_for,
)
from tests.unit.test_online_loop import tiny_encoder  # noqa: F401 (fixture)
from trainer.data.scenario import ScenarioConfig, build_scenario
from trainer.data.synthetic import WorldConfig, generate_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRESHNESS_TARGET_S = 0.5  # worker's update -> precomputed embedding (issue 16)
END_TO_END_S = 5.0  # produce an interaction -> GET returns the new embedding
DIM = 32


def _models(settings: Settings, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mekb.cli.main", "models", *args],
                            env=trainer_env(settings, 0), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _histogram_within(metrics: str, name: str, le: str) -> tuple[float, float]:
    """(observations <= le, all observations) of a Prometheus histogram."""
    within = total = 0.0
    for line in metrics.splitlines():
        if line.startswith(f'{name}_bucket{{le="{le}"}}'):
            within = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            total = float(line.rsplit(" ", 1)[1])
    return within, total


class Reference:
    """Embeddings straight from each version's bundle with ONNX Runtime (no server code)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.towers: dict[str, Any] = {}

    def embed(self, version: str, mekb: list[dict[str, Any]]) -> np.ndarray:
        mv = self.registry.get(version)
        if mv.model_kind == "entitygraph":
            from trainer.entitygraph.export import OnnxUserTower

            tower = self.towers.setdefault(version, OnnxUserTower(mv.path))
            return tower.encode([[(e["id"], float(e["score"])) for e in mekb]])[0]
        from serving.encoder import OnnxEncoder

        enc = self.towers.setdefault(version, OnnxEncoder(mv.path, mv.manifest["max_tokens"],
                                                          device="cpu"))
        titles = [e["title"] for e in sorted(mekb, key=lambda e: -float(e["score"]))]
        return enc.encode([sequence_text(titles, mv.manifest["max_tokens"])])[0][0]


def test_entitygraph_fresh_and_a_switch_between_kinds_under_load(
    broker: EmbeddedBroker, tsettings: Settings, alias: Path,  # noqa: F811
    tiny_encoder: str, tmp_path: Path,  # noqa: F811
) -> None:
    sc = build_scenario(generate_world(WorldConfig(users=150, seed=3)),
                        ScenarioConfig("books", "movies", min_item_positives=3, seed=0))
    settings = Settings(**{**tsettings.model_dump(), "target_domains": "books,movies"})
    registry = Registry(settings.data_dir / "registry")
    trainer = Trainer(settings, tmp_path / "trainer.log", MEKB_MODEL_KIND="entitygraph",
                      MEKB_TRAINER_ENCODER=tiny_encoder, MEKB_TRAINER_DIM=str(DIM),
                      MEKB_TRAINER_BATCH_SIZE="64", MEKB_TRAINER_PUBLISH_EVERY="0",
                      MEKB_TRAINER_PUBLISH_INTERVAL_S="2",
                      # every example trained: a publication follows the last one
                      MEKB_TRAINER_HOLDOUT_FRACTION="0")
    worker = Worker(settings, alias, "w1", tmp_path / "worker.log")
    serve = ServeProcess(broker, tmp_path / "serve-data", registry.root,
                         settings.topic_prefix, tmp_path / "serve.log")
    n_examples = len(sc.train)  # both domains are targets: one example per record
    try:
        _live_checks(sc, settings, registry, trainer, worker, serve, n_examples, tmp_path)
    finally:
        if serve.proc is not None and serve.proc.poll() is None:
            serve.stop()


def _live_checks(sc: Any, settings: Settings, registry: Registry, trainer: Trainer,
                 worker: Worker, serve: ServeProcess, n_examples: int, tmp_path: Path) -> None:
    try:
        trainer.wait_healthy()
        worker.wait_ready()
        produce(settings, "items", item_pairs(sc))
        worker.wait_items(len(sc.items))
        produce(settings, "interactions", interaction_pairs(sc))

        def trained() -> bool:
            active = registry.active()
            return active is not None and sum(
                active.manifest.get("training_offsets", {}).values()) >= n_examples

        wait_for(trained, 240, "an EntityGraph version trained on every example", trainer)
        eg = registry.active()
        assert eg is not None and eg.model_kind == "entitygraph" and eg.manifest["n_items"]
        serve.start()
        mekbs = latest_mekbs(settings)
        users = sorted(u for u in mekbs if len(mekbs[u]["entities"]) >= 3)[:3]
        assert len(users) == 3

        # 1) freshness: one interaction -> that user's EntityGraph embedding changes
        user = users[0]
        before = serve.client.get(f"/v1/users/{user}/embedding").json()
        lag_before = _histogram_within(serve.client.get("/metrics").text,
                                       "mekb_serving_precompute_lag_seconds",
                                       str(FRESHNESS_TARGET_S))
        seen = {r.item_id for r in sc.train if r.user_id == user}
        item = next(i for i in sorted(sc.items) if i not in seen and
                    sc.items[i].domain == "movies")
        sent = time.monotonic()
        produce(settings, "interactions", [(user.encode(), json.dumps({
            "v": 1, "event_id": f"fresh-{user}", "user_id": user, "item_id": item,
            "domain": "movies", "action": "rating", "ts": time.time(), "rating": 5.0,
        }).encode())])

        def changed() -> dict[str, Any] | None:
            body = serve.client.get(f"/v1/users/{user}/embedding").json()
            return body if body["mekb_version"] > before["mekb_version"] else None

        after = wait_for(changed, 30, f"{user}'s embedding to reflect the event", trainer) \
            or changed()
        elapsed = time.monotonic() - sent
        assert after is not None and after["model_version"] == eg.version
        assert after["embedding"] != before["embedding"] and after["stale"] is False
        assert elapsed < END_TO_END_S, f"the event reached the embedding after {elapsed:.2f}s"
        metrics = serve.client.get("/metrics").text
        within, total = _histogram_within(metrics, "mekb_serving_precompute_lag_seconds",
                                          str(FRESHNESS_TARGET_S))
        # the update of the event (the replica's catch-up before it is older than that)
        assert total - lag_before[1] >= 1 and within - lag_before[0] == total - lag_before[1], \
            (lag_before, within, total)
        deferred = 'mekb_serving_refresh_users_total{outcome="deferred"}'
        assert deferred not in metrics or f"{deferred} 0.0" in metrics
    finally:
        assert worker.stop() == 0
        # the trainer must not replace the active version during the switches below
        assert trainer.stop() == 0, trainer.tail()

    # 2) an EmbedMe version with the same items, then switches between kinds under load
    from serving.testing import write_tiny_bundle

    eg = registry.active()  # the trainer may have published the fresh event's example
    assert eg is not None and eg.model_kind == "entitygraph"
    deadline = time.monotonic() + 60
    while serve.client.get("/v1/models").json()["serving"] != eg.version:
        assert time.monotonic() < deadline, "the trainer's last version is not served"
        time.sleep(0.1)

    items = json.loads((eg.path / "items.json").read_text())
    em = registry.publish(write_tiny_bundle(
        tmp_path / "embedme", version="20990101T000000Z-e3bed0", item_ids=items["item_ids"],
        domains=items["domains"], dim=DIM), move=True)
    assert em.model_kind == "embedme"
    _switch_under_load(serve, registry, users, [em.version, eg.version],
                       lambda version: _models(settings, "activate", version))
    assert serve.stop() == 0


def _switch_under_load(serve: ServeProcess, registry: Registry, users: list[str],
                       sequence: list[str], activate: Callable[[str], object]) -> None:
    """Concurrent GETs of `users`' embeddings while `activate` switches to each version
    of `sequence` in turn (waiting until it serves): no failed request, and every
    response equals its named version's own embedding of that user."""
    ref = Reference(registry)
    mine = {u: serve.client.get(f"/v1/users/{u}/mekb").json()["entities"] for u in users}
    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer(user: str) -> None:
        client = httpx.Client(base_url=serve.url, headers={"X-API-Key": KEY}, timeout=30)
        while not stop.is_set():
            try:
                r = client.get(f"/v1/users/{user}/embedding")
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                body = r.json()
                versions.add(body["model_version"])
                want = ref.embed(body["model_version"], mine[user])
                assert len(body["embedding"]) == len(want), (body["model_version"], user)
                np.testing.assert_allclose(body["embedding"], want, rtol=1e-4, atol=1e-4)
            except (AssertionError, httpx.HTTPError, KeyError) as exc:
                failures.append(repr(exc)[:300])
        client.close()

    def serving(version: str) -> None:
        deadline = time.monotonic() + 60
        while serve.client.get("/v1/models").json()["serving"] != version:
            assert time.monotonic() < deadline, f"{version} never became active"
            time.sleep(0.1)

    first = serve.client.get("/v1/models").json()["serving"]
    threads = [threading.Thread(target=hammer, args=(u,)) for u in users]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for version in sequence:
            activate(version)
            serving(version)
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert versions == {first, *sequence}


def _tiny_entitygraph(out: Path, version: str, items: list[str], domains: list[str],
                      n_entities: int) -> Path:
    """A small but real EntityGraph bundle, exported by the trainer's own path."""
    import torch

    from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
    from trainer.online.kinds import EntityGraphOnline

    torch.manual_seed(0)
    model = EntityGraph(EntityGraphConfig(dim=DIM, hidden=32), 24).eval()
    vecs = np.random.default_rng(0).standard_normal((n_entities, 24)).astype(np.float32)
    model.add_entities([f"kb:e{n}" for n in range(n_entities)], vecs)
    model.add_items(items, domains)
    return EntityGraphOnline(Settings()).write_full_bundle(
        model, out, version=version, parent=None, gate={}, metrics={}, offsets={})


def test_switch_between_kinds_through_the_admin_api(broker: EmbeddedBroker,
                                                    tmp_path: Path) -> None:
    """EntityGraph -> EmbedMe -> EntityGraph by `POST /v1/models/{v}/activate` under
    concurrent requests (EmbedMe's embeddings are 16-wide, EntityGraph's 32: a response
    of one kind labelled with the other's version fails on its width too)."""
    from serving.testing import write_tiny_bundle

    items = [f"i{n}" for n in range(8)]
    domains = ["movies", "books"] * 4
    registry = Registry(tmp_path / "registry")
    eg = registry.publish(_tiny_entitygraph(tmp_path / "eg", "20990101T000000Z-e9a001",
                                            items, domains, 60), move=True)
    em = registry.publish(write_tiny_bundle(tmp_path / "em", version="20990101T000001Z-e3b001",
                                            item_ids=items, domains=domains, dim=16),
                          move=True)
    assert (eg.model_kind, em.model_kind) == ("entitygraph", "embedme")
    registry.activate(eg.version)
    serve = ServeProcess(broker, tmp_path / "serve-data", registry.root,
                         f"tk{uuid.uuid4().hex[:8]}-", tmp_path / "serve.log")
    create_topics(serve.settings)
    users = ["ann", "ben", "cid", "dee"]
    rng = np.random.default_rng(5)
    produce(serve.settings, "mekb-updates", [(u.encode(), json.dumps({
        "v": 1, "user_id": u, "version": 1, "ts": time.time(), "updated_at": time.time(),
        "entities": [{"id": f"kb:e{e}", "title": f"entity {e}", "k": 1.0,
                      "score": float(rng.random())}
                     for e in rng.choice(60, size=3 + 2 * n, replace=False)],
    }).encode()) for n, u in enumerate(users)])
    serve.start()
    admin = httpx.Client(base_url=serve.url, headers={"X-API-Key": ADMIN}, timeout=60)

    def activate(version: str) -> None:
        r = admin.post(f"/v1/models/{version}/activate")
        assert r.status_code == 200, r.text

    try:
        deadline = time.monotonic() + 30
        while any(serve.client.get(f"/v1/users/{u}/mekb").status_code != 200 for u in users):
            assert time.monotonic() < deadline, "the MeKBs never reached the replica"
            time.sleep(0.1)
        _switch_under_load(serve, registry, users, [em.version, eg.version], activate)
    finally:
        admin.close()
        assert serve.stop() == 0, serve.log.read_text()[-2000:]
