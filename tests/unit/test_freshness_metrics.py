"""Serving's two freshness measures: the processing lag (the worker's `updated_at` ->
applied, the SLO) and the event-time age (`ts` -> applied), observed apart, so a
replay of old events is fresh while its event-time age is decades."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics
from serving.replica import ApplyResult, Replica, UserRecord
from serving.service import EmbeddingService

REPLAYED_TS = 881_250_949.0  # MovieLens-100k, 1997


def _bucket(registry: CollectorRegistry, name: str, le: str) -> float:
    value = registry.get_sample_value(f"{name}_bucket", {"le": le})
    assert value is not None, name
    return value


def test_a_replay_of_old_events_is_fresh_by_processing_lag_and_old_by_event_age() -> None:
    registry = CollectorRegistry()
    service = EmbeddingService(Replica(None), ServingMetrics(registry))
    now = time.time()
    replayed = [UserRecord(f"u{n}", 1, REPLAYED_TS + n, now - 0.05, [], []) for n in range(50)]
    service.on_applied(ApplyResult(applied=replayed, deleted=[], older=0, bad=0))
    lag, age = "mekb_serving_processing_lag_seconds", "mekb_serving_event_age_seconds"
    assert registry.get_sample_value(f"{lag}_count") == 50
    assert _bucket(registry, lag, "1.0") == 50  # all well within the 2 s SLO
    assert registry.get_sample_value(f"{age}_count") == 50
    assert _bucket(registry, age, "3.1536e+07") == 0  # a year: decades old are in +Inf only
    assert _bucket(registry, age, "+Inf") == 50


def test_a_slow_pipeline_shows_in_the_processing_lag_and_a_skewed_clock_counts_zero() -> None:
    registry = CollectorRegistry()
    service = EmbeddingService(Replica(None), ServingMetrics(registry))
    now = time.time()
    service.on_applied(ApplyResult(applied=[
        UserRecord("late", 1, now - 20.0, now - 20.0, [], []),   # 20 s behind the worker
        UserRecord("ahead", 1, now, now + 5.0, [], []),          # worker clock ahead
        UserRecord("legacy", 1, now, 0.0, [], []),                # no updated_at: no lag
    ], deleted=[], older=0, bad=0))
    lag = "mekb_serving_processing_lag_seconds"
    assert registry.get_sample_value(f"{lag}_count") == 2
    assert _bucket(registry, lag, "0.01") == 1  # the skewed one, clamped to 0
    assert _bucket(registry, lag, "10.0") == 1 and _bucket(registry, lag, "30.0") == 2
    assert registry.get_sample_value("mekb_serving_event_age_seconds_count") == 3
