"""Prometheus metrics of the `mekb monitor` process (drift)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.entity_psi = Gauge(
            "mekb_drift_entity_psi",
            "PSI of the entity distribution of active users, last window vs the one before",
            registry=registry,
        )
        self.entity_js = Gauge(
            "mekb_drift_entity_js_divergence",
            "Jensen-Shannon divergence (bits) of the entity distribution between windows",
            registry=registry,
        )
        self.windows = Counter(
            "mekb_drift_windows",
            "Entity-distribution windows closed and compared",
            registry=registry,
        )
        self.updates = Counter(
            "mekb_drift_mekb_updates",
            "mekb-updates records read by the drift monitor",
            registry=registry,
        )
        self.embedding_cosine_shift = Gauge(
            "mekb_drift_embedding_cosine_shift",
            "Mean 1 - cos between the probe users' embeddings of the active and previous model",
            registry=registry,
        )
        self.embedding_topk_overlap = Gauge(
            "mekb_drift_embedding_topk_overlap_ratio",
            "Mean overlap of the probe users' top-10 items between the active and previous model",
            registry=registry,
        )
        self.probe_users = Gauge(
            "mekb_drift_probe_users",
            "Users in the fixed probe set used for embedding drift",
            registry=registry,
        )
