"""Grafana dashboards of MeKB-Stream, generated from short panel specs.

The provisioned JSON in deploy/grafana/dashboards/ is the output of
`python -m monitoring.grafana deploy/grafana/dashboards`; a test regenerates it and
fails when the committed files differ, and checks every metric a panel queries is
in the catalogue (docs/metrics.md). Writing specs rather than JSON keeps the four
dashboards consistent (same datasource, layout and units) and reviewable.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
PANEL_WIDTH = 12
PANEL_HEIGHT = 8


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _p99(metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket[5m])))"


def _p50(metric: str, by: str = "") -> str:
    return _p99(metric, by).replace("0.99", "0.5", 1)


PIPELINE = Dashboard(
    "mekb-pipeline", "MeKB-Stream / Pipeline",
    "Stream workers: events, dead letters, parking, latency, state size, lag.",
    (
        Panel("Events/s by outcome",
              (("sum by (agent, outcome) (rate(mekb_streams_events_total[1m]))",
                "{{agent}} {{outcome}}"),), "ops"),
        Panel("Dead letters/s by reason",
              (("sum by (reason) (rate(mekb_streams_dead_letters_total[5m]))", "{{reason}}"),),
              "ops", "Malformed or oversized events; originals are on the dead-letters topic."),
        Panel("Event time -> durable state (event-time age at the worker)",
              ((_p50("mekb_streams_processing_latency_seconds"), "p50"),
               (_p99("mekb_streams_processing_latency_seconds"), "p99")), "s"),
        Panel("Consumer lag",
              (("sum by (agent) (mekb_streams_consumer_lag_records)", "{{agent}}"),), "short"),
        Panel("Parked interactions",
              (("sum(mekb_streams_parked_interactions)", "parked"),), "short",
              "Interactions waiting for their item to arrive."),
        Panel("Users (N) and entities with df > 0",
              (("max(mekb_streams_users)", "N users"),
               ("max(mekb_streams_df_entities)", "entities")), "short"),
        Panel("MeKB size (entities per user, p50/p99)",
              ((_p50("mekb_streams_mekb_size_entities"), "p50"),
               (_p99("mekb_streams_mekb_size_entities"), "p99")), "short"),
        Panel("Batch duration p99 by agent",
              ((_p99("mekb_streams_batch_duration_seconds", "agent"), "{{agent}}"),), "s"),
    ),
)

TRAINER = Dashboard(
    "mekb-trainer", "MeKB-Stream / Trainer",
    "Continuous fine-tuning: throughput, loss, publications, quality gate, item tower age.",
    (
        Panel("Training examples/s by outcome",
              (("sum by (outcome) (rate(mekb_trainer_examples_total[5m]))", "{{outcome}}"),
               ("sum(rate(mekb_trainer_examples_cut_total[5m]))", "cut short of the model")),
              "ops", "cut: fewer entities than the model reads (MEKB_EXAMPLE_ENTITIES)."),
        Panel("Loss", (("avg(mekb_trainer_loss)", "loss"),), "short"),
        Panel("Step time p50/p99",
              ((_p50("mekb_trainer_step_duration_seconds"), "p50"),
               (_p99("mekb_trainer_step_duration_seconds"), "p99")), "s"),
        Panel("Consumer lag and owed replay",
              (("max(mekb_trainer_consumer_lag_records)", "lag (records)"),
               ("max(mekb_trainer_replay_owed_steps)", "replay owed (steps)")), "short",
              "Replay is owed while the trainer is behind (MEKB_TRAINER_REPLAY_DEFER_LAG) "
              "and taken when it catches up; a lag that stays high means the trainer "
              "cannot keep up even without replay."),
        Panel("Item tower age",
              (("time() - max(mekb_trainer_item_tower_published_timestamp_seconds)", "age"),),
              "s", "Refit is hourly by default; alert above 2 h.", "stat"),
        Panel("Quality gate decisions",
              (("sum by (decision) (increase(mekb_trainer_gate_decisions_total[1h]))",
                "{{decision}}"),), "short"),
    ),
)

SERVING = Dashboard(
    "mekb-serving", "MeKB-Stream / Serving",
    "Embedding service: latency, errors, cache, batching, ONNX time, freshness, model.",
    (
        Panel("Request p99 by endpoint",
              ((_p99("mekb_serving_request_duration_seconds", "endpoint"), "{{endpoint}}"),), "s"),
        Panel("Requests/s by code",
              (("sum by (code) (rate(mekb_serving_requests_total[1m]))", "{{code}}"),), "reqps"),
        Panel("Cache hit ratio",
              (("sum(rate(mekb_serving_cache_lookups_total{result=\"hit\"}[5m])) / "
                "clamp_min(sum(rate(mekb_serving_cache_lookups_total[5m])), 1e-9)", "hit ratio"),),
              "percentunit"),
        Panel("Processing lag p50/p99 (worker update -> embedding available; SLO 2 s)",
              ((_p50("mekb_serving_processing_lag_seconds"), "p50"),
               (_p99("mekb_serving_processing_lag_seconds"), "p99")), "s",
              "The freshness SLO, alerted on. Independent of event time: replays look fresh."),
        Panel("Event-time age p50/p99 at apply",
              ((_p50("mekb_serving_event_age_seconds"), "p50"),
               (_p99("mekb_serving_event_age_seconds"), "p99")), "s",
              "now - event time of applied updates: how old the data is (years for a "
              "replay of history). Informational, no alert."),
        Panel("ONNX inference p50/p99 per batch",
              ((_p50("mekb_serving_onnx_inference_seconds"), "p50"),
               (_p99("mekb_serving_onnx_inference_seconds"), "p99")), "s"),
        Panel("Batch size p50 by priority",
              ((_p50("mekb_serving_batch_size_sequences", "priority"), "{{priority}}"),), "short"),
        Panel("Replica lag", (("max(mekb_serving_replica_lag_records)", "records"),), "short"),
        Panel("Active model version",
              (("max by (version, kind, model_kind, provider) (mekb_serving_model_info)",
                "{{version}} {{kind}} {{model_kind}} {{provider}}"),), "short", "", "stat"),
    ),
)

DRIFT = Dashboard(
    "mekb-drift", "MeKB-Stream / Drift",
    "Entity distribution drift between windows, embedding drift between model versions, "
    "served score drift. Thresholds: docs/metrics.md.",
    (
        Panel("Entity PSI between consecutive windows",
              (("max(mekb_drift_entity_psi)", "PSI"),), "short", "Alert above 0.25."),
        Panel("Entity Jensen-Shannon divergence",
              (("max(mekb_drift_entity_js_divergence)", "JS"),), "short"),
        Panel("Embedding drift between model versions",
              (("max(mekb_drift_embedding_cosine_shift)", "mean cosine shift"),
               ("min(mekb_drift_embedding_topk_overlap_ratio)", "top-k overlap")), "short",
              "On a fixed probe set of users; alert if shift > 0.3 or overlap < 0.5."),
        Panel("Served score PSI", (("max(mekb_serving_score_psi)", "PSI"),), "short",
              "Recommendation scores, consecutive windows; alert above 0.25."),
    ),
)

DASHBOARDS = (PIPELINE, TRAINER, SERVING, DRIFT)


def render(dashboard: Dashboard) -> dict[str, object]:
    """Grafana dashboard JSON model (schema 39) for provisioning."""
    panels = []
    for i, panel in enumerate(dashboard.panels):
        panels.append({
            "id": i + 1,
            "type": panel.kind,
            "title": panel.title,
            "description": panel.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH,
                        "x": (i % 2) * PANEL_WIDTH, "y": (i // 2) * PANEL_HEIGHT},
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "options": {},
            "targets": [
                {"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": expr,
                 "legendFormat": legend}
                for j, (expr, legend) in enumerate(panel.queries)
            ],
        })
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["mekb"], "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "utc",
        "panels": panels,
    }


_METRIC = re.compile(r"\b(mekb_[a-z0-9_]+)")
_SUFFIXES = ("_bucket", "_sum", "_count")


def queried_metrics(dashboards: tuple[Dashboard, ...] = DASHBOARDS) -> set[str]:
    """Metric family names the panels query (histogram suffixes stripped)."""
    names = set()
    for dashboard in dashboards:
        for panel in dashboard.panels:
            for expr, _ in panel.queries:
                for name in _METRIC.findall(expr):
                    for suffix in _SUFFIXES:
                        name = name.removesuffix(suffix)
                    names.add(name)
    return names


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for dashboard in DASHBOARDS:
        path = directory / f"{dashboard.uid}.json"
        path.write_text(json.dumps(render(dashboard), indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/grafana/dashboards")
    for written in write_all(target):
        print(written)
