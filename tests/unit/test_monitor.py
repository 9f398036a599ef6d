from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import MonitorMetrics
from monitoring.monitor import DriftMonitor, ProbeSet


def _update(user: str, ids: list[str], ts: float) -> dict:
    return {"user_id": user, "ts": ts, "entities": [{"id": i, "title": i[3:]} for i in ids]}


def test_entity_drift_gauges_follow_windows(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    monitor = DriftMonitor(MonitorMetrics(reg), 60, ProbeSet(tmp_path / "probe.json", 2))
    for ts, user, ids in [
        (0, "u1", ["kb:A"]), (10, "u2", ["kb:A", "kb:B"]),
        (70, "u1", ["kb:A"]), (80, "u2", ["kb:A", "kb:B"]),
        (130, "u3", ["kb:Z"]),
        (190, "u5", ["kb:Z"]),  # watermark 130: closes window 1, identical to window 0
    ]:
        monitor.on_mekb_update(_update(user, ids, ts))
    assert reg.get_sample_value("mekb_drift_entity_psi") == pytest.approx(0.0, abs=1e-9)
    monitor.on_mekb_update(_update("u4", ["kb:Y"], 250))  # closes window 2: disjoint
    assert reg.get_sample_value("mekb_drift_entity_js_divergence") == pytest.approx(1.0)
    assert reg.get_sample_value("mekb_drift_windows_total") == 2
    assert reg.get_sample_value("mekb_drift_mekb_updates_total") == 7


def test_probe_set_is_fixed_and_persisted(tmp_path: Path) -> None:
    probe = ProbeSet(tmp_path / "probe.json", 2)
    for user in ("u1", "u2", "u3"):
        probe.offer(user, f"text of {user}")
    assert list(probe.texts) == ["u1", "u2"]
    assert ProbeSet(tmp_path / "probe.json", 2).texts == probe.texts


def test_embedding_drift_on_model_update(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(30, 4))
    users = {"v1": rng.normal(size=(2, 4))}
    users["v2"] = -users["v1"]
    reg = CollectorRegistry()
    probe = ProbeSet(tmp_path / "probe.json", 2)
    monitor = DriftMonitor(
        MonitorMetrics(reg), 60, probe,
        encode=lambda version, texts: users[version],
        items=lambda version: ([f"i{n}" for n in range(30)], items),
    )
    monitor.on_mekb_update(_update("u1", ["kb:A"], 0))
    monitor.on_mekb_update(_update("u2", ["kb:B"], 1))
    monitor.on_model_update({"version": "v2", "parent": "v1"})
    assert reg.get_sample_value("mekb_drift_embedding_cosine_shift") == pytest.approx(2.0)
    assert reg.get_sample_value("mekb_drift_embedding_topk_overlap_ratio") < 0.5
