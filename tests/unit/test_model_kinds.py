"""Model kinds (issue 16): manifests name their kind, old ones load as EmbedMe, unknown
ones are refused; the continuous trainer trains EntityGraph and publishes a bundle that
serving loads through the same interface as EmbedMe; the gate compares across kinds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from mekb.registry import MODEL_KINDS, Registry, RegistryError, UnknownModelKind
from serving.encoder import encoder_kinds
from serving.metrics import ServingMetrics
from serving.model import load_model
from serving.replica import Incoming, Replica, parse_record
from serving.service import EmbeddingService
from tests.unit.test_online_loop import Harness, make_settings, stream, tiny_encoder
from trainer.kinds import kind_names
from trainer.online.checkpoint import CheckpointStore
from trainer.online.kinds import checkpoint_dir, online_kind
from trainer.online.loop import OnlineTrainer, model_config, state_dir
from trainer.online.metrics import TrainerMetrics
from trainer.online.resume import load_start

__all__ = ["tiny_encoder"]  # the fixture, shared with test_online_loop


def _bundle(path: Path, **manifest: object) -> Path:
    path.mkdir(parents=True)
    (path / "user_tower.onnx").write_bytes(b"graph")
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_every_kind_is_known_to_registry_trainer_and_serving() -> None:
    assert sorted(MODEL_KINDS) == kind_names() == encoder_kinds()


def test_manifest_without_kind_loads_as_embedme(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    old = tmp_path / "reg" / "versions" / "20250101T000000Z-aaaaaa"
    _bundle(old, version=old.name, kind="full", created_at=1.0, files={})
    mv = reg.get(old.name)
    assert mv.model_kind == "embedme" and [v.version for v in reg.list()] == [old.name]
    # publishing a pre-kind bundle writes the kind down
    new = reg.publish(_bundle(tmp_path / "b"), version="20250102T000000Z-bbbbbb")
    assert new.manifest["model_kind"] == "embedme"


def test_unknown_kind_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(UnknownModelKind, match="unknown model kind 'hyperbolic'"):
        reg.publish(_bundle(tmp_path / "b", model_kind="hyperbolic"))
    assert not list((tmp_path / "reg" / "versions").iterdir())  # nothing half-published
    bad = tmp_path / "reg" / "versions" / "20250101T000000Z-cccccc"
    _bundle(bad, version=bad.name, kind="full", model_kind="hyperbolic", files={})
    with pytest.raises(RegistryError, match=r"unknown model kind 'hyperbolic' \(known: "
                       r"embedme, entitygraph\)"):
        reg.get(bad.name)
    with pytest.raises(RegistryError, match="unknown model kind"):
        reg.activate(bad.name)
    assert reg.list() == []  # skipped with a warning, not a crash


class KindHarness(Harness):
    def __init__(self, settings, kind: str) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self.prom = CollectorRegistry()
        self.kind = online_kind(kind, settings)
        self.store = CheckpointStore(checkpoint_dir(state_dir(settings), kind))
        self.registry = Registry(settings.data_dir / "registry")
        self.announced: list[str] = []
        torch.manual_seed(0)
        start = load_start(settings, self.store, self.registry, model_config(settings),
                           self.kind)
        self.source = start.source
        self.trainer = OnlineTrainer(
            settings, start.model, start.state, start.optimizer_state, self.store,
            self.registry, TrainerMetrics(self.prom),
            announce=lambda mv: self.announced.append(mv.version), kind=self.kind)


def _record(user: str, version: int, ents: list[tuple[str, float]]) -> bytes:
    return json.dumps({"v": 1, "user_id": user, "version": version, "ts": 1.0,
                       "updated_at": 1.0, "entities": [
                           {"id": f"kb:{t}", "title": t, "score": s} for t, s in ents]}).encode()


def test_entitygraph_trains_publishes_and_serves(tmp_path: Path, tiny_encoder: str) -> None:
    settings = make_settings(tmp_path, tiny_encoder, model_kind="entitygraph")
    h = KindHarness(settings, "entitygraph")
    h.trainer.startup()
    assert h.registry.active() is None  # no entity rows yet: nothing worth serving
    h.trainer.process(stream(40))  # the first examples give rows and a first version
    first = h.registry.active()
    assert first is not None and first.model_kind == "entitygraph"
    assert {"entities.npy", "entities.json", "entitygraph/model.safetensors"} <= set(first.files)
    assert "tokenizer/vocab.txt" not in first.files
    h.trainer.process(stream(400, 40))
    model = h.trainer.model
    assert model.n_entities == 6  # one row per entity seen, its title encoded once
    assert h.metric("mekb_trainer_entities_added_total") == 6
    assert h.trainer.state.examples_seen > 280
    # a checkpoint restores the same entity rows
    h.trainer.checkpoint()
    again = KindHarness(settings, "entitygraph")
    assert again.source == "checkpoint" and again.trainer.model.entity_ids == model.entity_ids
    # the gate compares kinds on one slice; the decision lands in the manifest
    h.trainer.publish_full(2e9)
    top = h.registry.active()
    assert top is not None and top.version != first.version
    gate = top.manifest["gate"]
    assert gate["candidate_kind"] == gate["active_kind"] == "entitygraph"
    assert gate["slice"] == gate["candidate"]["n"] > 0
    # serving: same interface, same numbers as the torch model
    loaded = load_model(h.registry, top.version, device="cpu")
    assert loaded.model_kind == "entitygraph" and loaded.batch_max >= 256
    rec = parse_record(_record("u1", 3, [("Apollo", 0.5), ("rocket", 0.3), ("Neptune", 0.2)]))
    served, _ = loaded.encode([loaded.input_of(rec)])
    assert loaded.encoder.unknown_entities == 1  # "Neptune": no row in this version, skipped
    kind = online_kind("entitygraph", settings)
    from trainer.online.examples import Example

    ex = Example("e", "u1", "action", "s0", 0.0, ("Apollo", "rocket"), 2,
                 ("kb:Apollo", "kb:rocket"), (0.5, 0.3))
    model.eval()
    with torch.no_grad():
        ref = kind.user_embeddings(model, [ex])
    assert np.abs(served - ref).max() < 1e-4


def test_gate_compares_a_candidate_with_an_active_version_of_another_kind(
        tmp_path: Path, tiny_encoder: str) -> None:
    settings = make_settings(tmp_path, tiny_encoder)
    emb = KindHarness(settings, "embedme")
    emb.trainer.startup()
    active = emb.registry.active()
    assert active is not None and active.model_kind == "embedme"
    eg = KindHarness(make_settings(tmp_path, tiny_encoder, model_kind="entitygraph"),
                     "entitygraph")
    assert eg.source == "pretrained"  # the active version is of another kind
    eg.trainer.process(stream(600))
    eg.trainer.publish_full(2e9)
    gate = eg.trainer.state.extra.get("last_gate") or eg.registry.active().manifest["gate"]
    assert gate["candidate_kind"] == "entitygraph" and gate["active_kind"] == "embedme"
    assert gate["slice"] > 0 and gate["active"]["n"] == gate["candidate"]["n"]
    assert eg.metric("mekb_trainer_gate_slice_examples") == gate["slice"]
    if gate["decision"] == "published":  # the active kind changed automatically
        assert eg.registry.active().model_kind == "entitygraph"


def test_service_refreshes_entitygraph_users_in_micro_batches(tmp_path: Path,
                                                              tiny_encoder: str) -> None:
    settings = make_settings(tmp_path, tiny_encoder, model_kind="entitygraph")
    h = KindHarness(settings, "entitygraph")
    h.trainer.process(stream(200))
    h.trainer.startup()
    loaded = load_model(h.registry, h.registry.active_version() or "", device="cpu")

    async def run() -> None:
        service = EmbeddingService(Replica(tmp_path / "replica"),
                                   ServingMetrics(CollectorRegistry()))
        service.replica_caught_up = True
        await service.start()
        try:
            service.activate(loaded)
            result = service.replica.apply([
                Incoming(0, n, f"u{n}".encode(),
                         _record(f"u{n}", 1, [("Apollo", 0.6), ("pasta", 0.4)]))
                for n in range(600)])
            service.on_applied(result)
            for _ in range(300):
                if len(service.cache) == 600:
                    break
                await asyncio.sleep(0.01)
            assert len(service.cache) == 600  # all refreshed in micro-batches of 512
            m = service.metrics
            assert m.refresh.labels("deferred")._value.get() == 0
            assert m.refresh.labels("refreshed")._value.get() == 600
            out = await service.embed(loaded, ["u3"])
            assert out[0].cached and out[0].model_version == loaded.version
        finally:
            await service.stop()

    asyncio.run(run())


def test_up_runs_entitygraph_by_default(tmp_path: Path) -> None:
    from mekb.cli.up import _banner, component_env
    from mekb.settings import Settings

    assert component_env("127.0.0.1:9", tmp_path, {})["MEKB_MODEL_KIND"] == "entitygraph"
    assert "MEKB_MODEL_KIND" not in component_env("127.0.0.1:9", tmp_path,
                                                  {"MEKB_MODEL_KIND": "embedme"})
    flag = Settings(data_dir=tmp_path, model_kind="embedme")
    assert component_env("127.0.0.1:9", tmp_path, {}, flag)["MEKB_MODEL_KIND"] == "embedme"
    text = _banner(flag, "v1", tmp_path, None, once=True, model_kind="entitygraph",
                   trainer_kind="entitygraph")
    assert "model v1 (entitygraph) serves embeddings" in text


def test_entitygraph_item_refit_keeps_its_tower(tmp_path: Path, tiny_encoder: str) -> None:
    settings = make_settings(tmp_path, tiny_encoder, model_kind="entitygraph")
    h = KindHarness(settings, "entitygraph")
    h.trainer.process(stream(300))
    h.trainer.publish_full(2e9)
    tower = h.registry.active()
    mv = h.trainer.refit(3e9)
    assert mv is not None and mv.kind == "items" and mv.model_kind == "entitygraph"
    assert mv.parent == tower.version and "entitygraph/model.safetensors" not in mv.files
    for name in ("user_tower.onnx", "entities.npy", "entities.json"):
        assert mv.files[name] == tower.files[name]  # the tower, copied as it is
    loaded = load_model(h.registry, mv.version, device="cpu")
    assert loaded.tower == load_model(h.registry, tower.version, device="cpu").tower


@pytest.mark.parametrize("kind", ["entitygraph", "embedme"])
def test_a_resumed_trainer_says_its_config_was_kept_only_when_it_differs(
    tmp_path: Path, tiny_encoder: str, kind: str, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, tiny_encoder, model_kind=kind)
    h = KindHarness(settings, kind)
    h.trainer.startup()
    h.trainer.process(stream(16))
    h.trainer.checkpoint()
    with caplog.at_level("INFO", logger="trainer.online.resume"):
        again = KindHarness(settings, kind)  # same settings: nothing to say
    assert again.source == "checkpoint"
    assert "kept from the" not in caplog.text
    if kind == "embedme":  # settings that ask another EmbedMe config: said once
        other = make_settings(tmp_path, tiny_encoder, model_kind=kind, trainer_dim=24)
        with caplog.at_level("INFO", logger="trainer.online.resume"):
            KindHarness(other, kind)
        assert "kept from the checkpoint" in caplog.text
