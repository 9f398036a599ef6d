"""Prometheus metrics of the stream worker (registry passed in; tests use a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
SIZE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "mekb_streams_events_total",
            "Events handled by outcome (applied, unparked, duplicate, ignored, parked, "
            "expired, dead_letter, example for emitted training examples, deleted for "
            "delete_user records, user_expired for users removed by MEKB_USER_TTL_S; item "
            "agent: linked, unchanged, dead_letter).",
            ["agent", "outcome"], registry=registry,
        )
        self.dead_letters = Counter(
            "mekb_streams_dead_letters_total", "Records sent to the dead-letter topic, by reason.",
            ["agent", "reason"], registry=registry,
        )
        self.parked = Gauge(
            "mekb_streams_parked_interactions",
            "Interactions waiting for their item (all partitions of this worker).",
            registry=registry,
        )
        self.latency = Histogram(
            "mekb_streams_processing_latency_seconds",
            "Event time to durable state update, per applied interaction.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.mekb_size = Histogram(
            "mekb_streams_mekb_size_entities", "Entities in a user's MeKB at each update.",
            buckets=SIZE_BUCKETS, registry=registry,
        )
        self.df_entities = Gauge(
            "mekb_streams_df_entities", "Entities with df > 0 in the global df table.",
            registry=registry,
        )
        self.users = Gauge(
            "mekb_streams_users", "N: users with a non-empty MeKB (global df table).",
            registry=registry,
        )
        self.items = Gauge(
            "mekb_streams_items", "Items in the item -> entities table.", registry=registry,
        )
        self.lag = Gauge(
            "mekb_streams_consumer_lag_records",
            "Records behind the partition's high watermark (approximate on Tansu, whose "
            "watermark is off for multi-record batches).",
            ["agent", "partition"], registry=registry,
        )
        self.batch_seconds = Histogram(
            "mekb_streams_batch_duration_seconds",
            "One batch, from the start of its processing to its commit (outputs, changelog, "
            "RocksDB, df partials; the MeKB agent's batches overlap, so it includes the wait for "
            "the previous one).",
            ["agent"], registry=registry,
        )
        self.restore_seconds = Histogram(
            "mekb_streams_restore_duration_seconds",
            "Catching a partition's state up from the changelog after assignment.",
            registry=registry,
        )
        self.partitions = Gauge(
            "mekb_streams_assigned_partitions", "Partitions assigned to this worker.",
            ["agent"], registry=registry,
        )
