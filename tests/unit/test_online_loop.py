"""The continuous trainer's core in-process: a tiny random BERT (same code paths as
MiniLM, seconds instead of minutes), a real registry and checkpoint store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from mekb.registry import Registry
from mekb.settings import Settings
from trainer.model import EmbedMe, EmbedMeConfig, default_encoder
from trainer.online.checkpoint import CheckpointStore
from trainer.online.loop import OnlineTrainer, Record, model_config, state_dir
from trainer.online.metrics import TrainerMetrics
from trainer.online.resume import load_start


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(default_encoder()).save_pretrained(str(path))
    return str(path)


def make_settings(tmp_path: Path, encoder: str, **over: Any) -> Settings:
    base = dict(
        data_dir=tmp_path / "data", topic_prefix="t-", trainer_encoder=encoder,
        trainer_dim=16, trainer_max_tokens=16, trainer_batch_size=8,
        trainer_publish_every=0, trainer_publish_interval_s=0,
        trainer_refit_interval_s=10_000, trainer_holdout_fraction=0.2,
        trainer_gate_min_examples=5, trainer_gate_negatives=20, trainer_lr=1e-3,
        trainer_item_lr=5e-2, trainer_checkpoint_interval_s=10_000,
    )
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prom = CollectorRegistry()
        self.store = CheckpointStore(state_dir(settings) / "checkpoints")
        self.registry = Registry(settings.data_dir / "registry")
        self.announced: list[str] = []
        torch.manual_seed(0)
        start = load_start(settings, self.store, self.registry, model_config(settings))
        self.source = start.source
        self.trainer = OnlineTrainer(
            settings, start.model, start.state, start.optimizer_state, self.store,
            self.registry, TrainerMetrics(self.prom),
            announce=lambda mv: self.announced.append(mv.version))

    def metric(self, name: str, **labels: str) -> float:
        value = self.prom.get_sample_value(name, labels)
        return 0.0 if value is None else value


def example(i: int, item: str, titles: list[str], domain: str = "action") -> bytes:
    return json.dumps({
        "v": 1, "example_id": f"ev-{i}", "user_id": f"u{i % 7}", "ts": float(i),
        "domain": domain, "item_id": item, "mekb_version": 1,
        "entities": [{"id": f"kb:{t}", "title": t, "score": 1.0} for t in titles],
    }).encode()


def stream(n: int, start: int = 0) -> list[Record]:
    """Two tastes: titles about space → items s*, about cooking → items c*."""
    recs = []
    for i in range(start, start + n):
        if i % 2:
            value = example(i, f"s{i % 3}", ["Apollo", "rocket", "Mars orbit"])
        else:
            value = example(i, f"c{i % 3}", ["pasta", "kitchen", "olive oil"])
        recs.append(Record(i % 2, i // 2, value))
    return recs


def test_fresh_start_publishes_an_initial_version(tmp_path: Path, tiny_encoder: str) -> None:
    h = Harness(make_settings(tmp_path, tiny_encoder))
    assert h.source == "pretrained"
    offsets = h.trainer.startup()
    active = h.registry.active()
    assert active is not None and offsets == {}
    h.registry.verify(active.version)
    assert active.kind == "full" and active.manifest["gate"]["decision"] == "initial"
    assert (active.path / "embedme" / "model.safetensors").is_file()
    assert "embedme/model.safetensors" in active.files
    assert h.announced == [active.version]
    assert h.metric("mekb_trainer_gate_decisions_total", decision="initial", kind="full") == 1
    assert h.metric("mekb_trainer_active_version_info", version=active.version,
                    kind="full", model_kind="embedme") == 1
    # a restart finds the publication of its checkpoint done: no second version
    again = Harness(h.settings)
    assert again.source == "checkpoint"
    again.trainer.startup()
    assert len(h.registry.list()) == 1 and h.registry.active_version() == active.version
    assert "publishing" not in again.trainer.state.extra


def test_training_extends_items_and_learns(tmp_path: Path, tiny_encoder: str) -> None:
    h = Harness(make_settings(tmp_path, tiny_encoder))
    t = h.trainer
    t.startup()
    recs = stream(40)
    recs.append(Record(0, 20, b"not json"))
    t.process(recs)
    assert 0 < len(t.pending) < 8  # only full micro-batches while records keep coming
    t.process([])  # an empty poll trains the rest
    assert not t.pending
    assert sorted(t.model.item_ids) == ["c0", "c1", "c2", "s0", "s1", "s2"]
    held = int(h.metric("mekb_trainer_examples_total", outcome="held_out"))
    trained = int(h.metric("mekb_trainer_examples_total", outcome="trained"))
    assert held > 0 and trained + held == 40
    assert h.metric("mekb_trainer_examples_total", outcome="invalid") == 1
    assert not {e.example_id for e in t.holdout} & {e.example_id for e in t.recent}
    assert t.offsets == {"t-training-examples:0": 21, "t-training-examples:1": 20}
    first = h.metric("mekb_trainer_loss")
    for _ in range(5):
        t.process(stream(40))
    assert h.metric("mekb_trainer_loss") < first
    assert h.metric("mekb_trainer_items") == 6
    # the taste is learned: space users rank space items above cooking items
    with torch.no_grad():
        t.model.eval()
        u = t.model.encode_texts(["Apollo [SEP] rocket [SEP] Mars orbit"])
        scores = t.model.logits(u, "action")[0]
    rows = {i: r for r, i in enumerate(t.model.item_ids)}
    assert min(scores[rows[f"s{k}"]] for k in range(3)) > max(
        scores[rows[f"c{k}"]] for k in range(3))
    # Examples cut below the 8 titles a 16-token model reads, while the MeKB had more.
    assert h.metric("mekb_trainer_examples_cut_total") == 0
    cut = json.loads(example(1, "s1", ["Apollo", "rocket"]))
    t.process([Record(0, 100, json.dumps({**cut, "mekb_size": 30}).encode()),
               Record(0, 101, json.dumps({**cut, "mekb_size": 2}).encode())])
    assert h.metric("mekb_trainer_examples_cut_total") == 1


def test_publication_order_and_crash_recovery(
    tmp_path: Path, tiny_encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, tiny_encoder, trainer_publish_every=30)
    h = Harness(settings)
    h.trainer.startup()
    first = h.registry.active_version()
    calls: list[str] = []
    real_save = h.store.save

    def traced_save(*a: Any, **k: Any) -> Any:
        calls.append("checkpoint")
        return real_save(*a, **k)

    def crash(*a: Any, **k: Any) -> Any:
        calls.append("publish")
        raise KeyboardInterrupt("SIGKILL stand-in")

    monkeypatch.setattr(h.store, "save", traced_save)
    monkeypatch.setattr(h.registry, "publish", crash)
    with pytest.raises(KeyboardInterrupt):
        h.trainer.process(stream(40))
    assert calls == ["checkpoint", "publish"]  # weights saved before publishing
    pending = h.store.latest()
    assert pending is not None and "publishing" in pending.state.extra
    version = pending.state.extra["publishing"]["version"]
    assert h.registry.active_version() == first and len(h.registry.list()) == 1
    assert not list(h.registry.versions_dir.glob(".staging-*"))
    weights = {k: v.clone() for k, v in h.trainer.model.state_dict().items()}
    monkeypatch.undo()

    # restart: the same version id is published from the checkpoint's weights
    r = Harness(settings)
    offsets = r.trainer.startup()
    assert offsets == pending.state.offsets and sum(offsets.values()) == 40
    assert r.registry.active_version() == version
    mv = r.registry.verify(version)
    assert mv.parent == first and mv.manifest["training_offsets"] == offsets
    assert mv.manifest["gate"]["decision"] in ("published", "skipped")
    restored = EmbedMe.load(mv.path / "embedme")
    for key in ("item_table", "mlp.2.weight"):
        assert torch.equal(restored.state_dict()[key], weights[key])
    assert len(r.registry.list()) == 2
    # and once more: nothing new
    Harness(settings).trainer.startup()
    assert len(r.registry.list()) == 2 and r.registry.active_version() == version


def test_resume_from_registry_when_checkpoints_are_gone(
    tmp_path: Path, tiny_encoder: str
) -> None:
    import shutil

    settings = make_settings(tmp_path, tiny_encoder, trainer_publish_every=30)
    h = Harness(settings)
    h.trainer.startup()
    offsets = h.trainer.process(stream(40))
    assert offsets is not None
    active = h.registry.active()
    assert active is not None and active.manifest["training_offsets"] == offsets
    shutil.rmtree(state_dir(settings))
    r = Harness(settings)
    assert r.source == "registry"
    assert r.trainer.offsets == offsets and r.trainer.state.parent_version == active.version
    assert torch.equal(r.trainer.model.item_table, h.trainer.model.item_table)


def test_gate_rejects_a_worse_candidate(tmp_path: Path, tiny_encoder: str) -> None:
    settings = make_settings(tmp_path, tiny_encoder, trainer_publish_every=10_000,
                             trainer_gate_tolerance=0.0, trainer_holdout_fraction=0.3)
    h = Harness(settings)
    t = h.trainer
    t.startup()
    for _ in range(5):
        t.process(stream(40))
    good = t.publish_full(1e9)
    assert good is not None
    active = h.registry.active()
    assert active is not None and active.manifest["gate"]["decision"] == "published"
    assert active.manifest["gate"]["candidate"]["hr10"] >= active.manifest["gate"]["active"][
        "hr10"]
    # sabotage the live model: swap the item rows of the two tastes
    with torch.no_grad():
        rows = {i: r for r, i in enumerate(t.model.item_ids)}
        for k in range(3):
            s, c = rows[f"s{k}"], rows[f"c{k}"]
            t.model.item_table[[s, c]] = t.model.item_table[[c, s]].clone()
    t.publish_full(2e9)
    assert h.registry.active_version() == active.version and len(h.registry.list()) == 2
    assert h.metric("mekb_trainer_gate_decisions_total", decision="rejected", kind="full") == 1
    assert t.state.extra["last_gate"]["decision"] == "rejected"
    # 6 items: HR@10 is 1 for any model, the ranking shows in NDCG@10
    assert h.metric("mekb_trainer_gate_score", model="candidate", metric="ndcg10") < \
        h.metric("mekb_trainer_gate_score", model="active", metric="ndcg10")


def test_item_tower_refit_publishes_items_version(tmp_path: Path, tiny_encoder: str) -> None:
    settings = make_settings(tmp_path, tiny_encoder, trainer_refit_interval_s=5.0,
                             trainer_refit_epochs=20, trainer_gate_min_examples=10_000)
    h = Harness(settings)
    t = h.trainer
    t.startup()
    full = h.registry.active()
    assert full is not None
    t.process(stream(40), now=t.state.last_refit_at + 1)  # not due yet
    assert len(h.registry.list()) == 1
    t.process([Record(0, 100, example(1000, "new-item", ["Apollo"]))],
              now=t.state.last_refit_at + 6)
    items = h.registry.active()
    assert items is not None and items.kind == "items" and items.parent == full.version
    h.registry.verify(items.version)
    assert items.files["user_tower.onnx"] == full.files["user_tower.onnx"]
    assert "embedme/model.safetensors" not in items.files
    meta = json.loads((items.path / "items.json").read_text())
    assert "new-item" in meta["item_ids"] and len(meta["item_ids"]) == t.model.n_items
    m = items.manifest["metrics"]
    assert m["refit_loss_after"] < m["refit_loss_before"]
    table = np.load(items.path / "items.npy")
    assert table.shape == (t.model.n_items, 16)
    assert h.metric("mekb_trainer_gate_decisions_total", decision="skipped", kind="items") == 1
    # resuming from the registry overlays the refit table on the parent's weights
    import shutil

    shutil.rmtree(state_dir(settings))
    r = Harness(settings)
    rows = {i: k for k, i in enumerate(r.trainer.model.item_ids)}
    got = r.trainer.model.item_table.detach().numpy()
    np.testing.assert_allclose(got[[rows[i] for i in meta["item_ids"]]], table, rtol=1e-6)
    assert EmbedMeConfig.from_json(r.trainer.model.config.to_json()).dim == 16
    # a refit with nothing trained since the previous one publishes nothing
    rt = r.trainer
    rt.refit(rt.state.last_refit_at + 6)
    n_versions = len(r.registry.list())
    assert rt.refit(rt.state.last_refit_at + 6) is None
    assert len(r.registry.list()) == n_versions


@pytest.mark.skipif(not hasattr(EmbedMe, "freeze_lower_layers"),
                    reason="EmbedMe.freeze_lower_layers not available")
def test_freeze_layers_keeps_lower_encoder_fixed(tmp_path: Path, tiny_encoder: str) -> None:
    h = Harness(make_settings(tmp_path, tiny_encoder, trainer_freeze_layers=1))
    t = h.trainer
    t.startup()
    enc = t.model.encoder
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    t.process(stream(24))
    t.process([])
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("encoder.layer.1.") for n in changed), changed
    # a restart with the same profile restores the optimiser state
    t.checkpoint()
    r = Harness(h.settings)
    assert r.trainer.optimizer.state_dict()["state"]


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_optimizer_setting_is_used_and_survives_restart(
    tmp_path: Path, tiny_encoder: str, name: str
) -> None:
    """MEKB_TRAINER_OPTIMIZER picks trainer/optim.py's optimiser (the one `mekb train`
    uses); its state comes back from the checkpoint."""
    from pytorch_optimizer import Lamb

    h = Harness(make_settings(tmp_path, tiny_encoder, trainer_optimizer=name))
    t = h.trainer
    t.startup()
    assert isinstance(t.optimizer, Lamb if name == "lamb" else torch.optim.AdamW)
    item_groups = [g for g in t.optimizer.param_groups if g.get("adam")]
    assert len(item_groups) == 1 and item_groups[0]["lr"] == h.settings.trainer_item_lr
    t.process(stream(16))
    t.checkpoint()
    r = Harness(h.settings)
    assert type(r.trainer.optimizer) is type(t.optimizer)
    assert r.trainer.optimizer.state_dict()["state"]
