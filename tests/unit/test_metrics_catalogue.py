"""Each process's metric set (built in-process on a fresh registry, exactly as the
process builds it) equals what docs/metrics.md lists for that process; the
catalogue follows the naming conventions. The live processes are checked the same
way by tests/integration/test_system.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.catalogue import conformance, load_catalogue, naming_problems


def _streams(registry: CollectorRegistry) -> Any:
    from streams.metrics import StreamMetrics

    return StreamMetrics(registry)


def _trainer(registry: CollectorRegistry) -> Any:
    from trainer.online.metrics import TrainerMetrics

    return TrainerMetrics(registry)


def _serving(registry: CollectorRegistry) -> Any:
    from serving.metrics import ServingMetrics

    return ServingMetrics(registry)


def _monitor(registry: CollectorRegistry) -> Any:
    from monitoring.metrics import MonitorMetrics

    return MonitorMetrics(registry)


PROCESSES: dict[str, Callable[[CollectorRegistry], Any]] = {
    "worker": _streams, "trainer": _trainer, "serving": _serving, "monitor": _monitor,
}


def test_catalogue_follows_naming_conventions() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) > 40
    assert naming_problems(catalogue) == []


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_process_metrics_match_the_catalogue(process: str) -> None:
    registry = CollectorRegistry()
    PROCESSES[process](registry)
    exposition = generate_latest(registry).decode()
    assert "mekb_" in exposition
    assert conformance(process, exposition, load_catalogue()) == []


def test_every_catalogued_metric_belongs_to_a_known_process() -> None:
    for spec in load_catalogue().values():
        assert {p.strip() for p in spec.process.split(",")} <= set(PROCESSES), spec.name
