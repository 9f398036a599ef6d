"""Embedding drift between two real published versions (real MiniLM, real ONNX
Runtime, real registry): a version compared with itself shows no drift, a
retrained one shows drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from mekb.registry import Registry
from monitoring.bundles import RegistryModels
from monitoring.metrics import MonitorMetrics
from monitoring.monitor import DriftMonitor, ProbeSet
from trainer.export import write_bundle
from trainer.model import EmbedMe, EmbedMeConfig

pytestmark = pytest.mark.integration

TITLES = ["Christopher Nolan", "Leonardo DiCaprio", "Jazz", "Stephen King", "Horror film",
          "Tom Hanks", "Science fiction", "The Beatles", "Miles Davis", "Drama"]


def _publish(registry: Registry, model: EmbedMe, tmp: Path, version: str,
             parent: str | None) -> None:
    bundle = write_bundle(model, tmp / version, version=version, parent=parent)
    registry.publish(bundle, parent=parent, version=version, activate=True)


def test_drift_metrics_from_real_versions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    items = [f"i{n}" for n in range(40)]
    model = EmbedMe(EmbedMeConfig(dim=16, max_tokens=24), items, ["action"] * 40).eval()
    registry = Registry(tmp_path / "registry")
    _publish(registry, model, tmp_path, "20260101T000000Z-aaaaaa", None)
    _publish(registry, model, tmp_path, "20260101T010000Z-bbbbbb", "20260101T000000Z-aaaaaa")
    with torch.no_grad():  # a "retrained" version: the MLP head and item table moved
        for name, param in model.named_parameters():
            if not name.startswith("encoder."):
                param.add_(torch.randn_like(param) * 0.5)
    _publish(registry, model, tmp_path, "20260101T020000Z-cccccc", "20260101T010000Z-bbbbbb")

    metrics = MonitorMetrics(CollectorRegistry())
    probe = ProbeSet(tmp_path / "probe.json", size=20)
    models = RegistryModels(registry)
    monitor = DriftMonitor(metrics, 3600.0, probe, encode=models.encode, items=models.items)
    rng = np.random.default_rng(0)
    for user in range(20):
        picked = rng.choice(len(TITLES), size=3, replace=False)
        monitor.on_mekb_update({
            "user_id": f"u{user}", "ts": 1000.0 + user,
            "entities": [{"id": f"kb:{TITLES[i]}", "title": TITLES[i]} for i in picked],
        })
    assert len(probe.texts) == 20

    monitor.on_model_update({"version": "20260101T010000Z-bbbbbb",
                             "parent": "20260101T000000Z-aaaaaa"})
    assert metrics.embedding_cosine_shift._value.get() == pytest.approx(0.0, abs=1e-5)
    assert metrics.embedding_topk_overlap._value.get() == pytest.approx(1.0)

    monitor.on_model_update({"version": "20260101T020000Z-cccccc",
                             "parent": "20260101T010000Z-bbbbbb"})
    assert metrics.embedding_cosine_shift._value.get() > 0.05
    assert metrics.embedding_topk_overlap._value.get() < 1.0
