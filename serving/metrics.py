"""Prometheus metrics of the embedding service (registry passed in; tests use a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Cache hits are sub-millisecond, misses tens of ms to seconds on CPU.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
# Event-time age spans seconds (live traffic) to years (a replay of history).
AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0,
               30 * 86400.0, 365 * 86400.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_seconds = Histogram(
            "mekb_serving_request_duration_seconds",
            "HTTP request latency by endpoint (route template).",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.requests = Counter(
            "mekb_serving_requests_total", "HTTP requests by endpoint and status code.",
            ["endpoint", "code"], registry=registry,
        )
        self.cache_lookups = Counter(
            "mekb_serving_cache_lookups_total",
            "User embedding lookups: hit (cached for the user's latest MeKB version and the "
            "active user tower), miss (computed), cold (unknown user), stale (allow_stale).",
            ["result"], registry=registry,
        )
        self.cache_users = Gauge(
            "mekb_serving_cache_users", "User embeddings held in the cache.", registry=registry
        )
        self.batch_size = Histogram(
            "mekb_serving_batch_size_sequences",
            "Sequences per ONNX Runtime run, by priority (request or refresh).",
            ["priority"], buckets=BATCH_BUCKETS, registry=registry,
        )
        self.inference_seconds = Histogram(
            "mekb_serving_onnx_inference_seconds",
            "ONNX Runtime session.run time per batch (tokenization excluded).",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "mekb_serving_queue_wait_seconds",
            "Time a sequence waited in the dynamic batcher before its run started.",
            ["priority"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.processing_lag = Histogram(
            "mekb_serving_processing_lag_seconds",
            "Processing lag (the freshness SLO): the stream worker's update of a user's MeKB "
            "(`updated_at`, wall clock) -> applied to this replica; from then on every request "
            "returns an embedding reflecting it (precomputed or computed on demand). "
            "Independent of event time: a replay of old events is as fresh as live ones.",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.event_age = Histogram(
            "mekb_serving_event_age_seconds",
            "Event-time age of an update when applied to this replica: now - `ts` (the newest "
            "event time in the user's MeKB). Large for replays, backfills and late producers; "
            "informational, not the freshness SLO.",
            buckets=AGE_BUCKETS, registry=registry,
        )
        self.precompute_lag = Histogram(
            "mekb_serving_precompute_lag_seconds",
            "The stream worker's update of a user's MeKB (`updated_at`) -> its embedding "
            "precomputed by the refresher (cache hits from then on).",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.refresh = Counter(
            "mekb_serving_refresh_users_total",
            "Refresher outcomes per updated user: refreshed, coalesced (a newer update of a "
            "pending user), deferred (left to on-demand: over capacity), skipped (already "
            "cached).",
            ["outcome"], registry=registry,
        )
        self.refresh_pending = Gauge(
            "mekb_serving_refresh_pending_users", "Updated users waiting for the refresher.",
            registry=registry,
        )
        self.refresh_capacity = Gauge(
            "mekb_serving_refresher_capacity_users_per_second",
            "Users/s the refresher can re-encode on this device (moving average).",
            registry=registry,
        )
        self.replica_records = Counter(
            "mekb_serving_replica_records_total",
            "mekb-updates records by outcome: applied, older (version not newer), bad.",
            ["outcome"], registry=registry,
        )
        self.replica_lag = Gauge(
            "mekb_serving_replica_lag_records",
            "mekb-updates records not yet applied to the replica (high watermark - position).",
            registry=registry,
        )
        self.model_info = Gauge(
            "mekb_serving_model_info",
            "The active model version (value 1) with its kind (full/items), model kind "
            "(embedme/entitygraph) and execution provider.",
            ["version", "kind", "model_kind", "provider"], registry=registry,
        )
        self.model_swaps = Counter(
            "mekb_serving_model_swaps_total", "Model versions made active in this process.",
            registry=registry,
        )
        self.model_load_failures = Counter(
            "mekb_serving_model_load_failures_total",
            "Versions that failed verification, loading or warm-up (the old one kept serving).",
            registry=registry,
        )
        self.model_load_seconds = Histogram(
            "mekb_serving_model_load_seconds", "Verify + load + warm-up time of a version.",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.ready = Gauge(
            "mekb_serving_ready",
            "1 when a model version is loaded and the replica has caught up (/readyz).",
            registry=registry,
        )
        self.score_psi = Gauge(
            "mekb_serving_score_psi",
            "PSI of the served recommendation scores, last window vs the one before "
            "(monitoring/score_drift.py).",
            registry=registry,
        )
