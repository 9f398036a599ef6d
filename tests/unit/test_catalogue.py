from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from monitoring.catalogue import conformance, exposed_metrics, load_catalogue, naming_problems

TABLE = """
| metric | type | labels | unit | process | meaning |
|---|---|---|---|---|---|
| `mekb_x_events_total` | counter | `outcome` | events | worker | events by outcome |
| `mekb_x_latency_seconds` | histogram | - | seconds | worker, serving | latency |
| `mekb_x_model_info` | info | `version` | - | serving | active model |
"""


def _exposition() -> str:
    reg = CollectorRegistry()
    Counter("mekb_x_events", "e", ["outcome"], registry=reg).labels("ok").inc()
    Histogram("mekb_x_latency_seconds", "l", registry=reg).observe(0.1)
    Gauge("mekb_x_unlisted", "u", registry=reg).set(1)
    return generate_latest(reg).decode()


def test_catalogue_parses_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.md"
    path.write_text(TABLE)
    specs = load_catalogue(path)
    assert set(specs) == {"mekb_x_events_total", "mekb_x_latency_seconds", "mekb_x_model_info"}
    assert specs["mekb_x_events_total"].labels == ("outcome",)
    assert specs["mekb_x_latency_seconds"].labels == ()
    assert naming_problems(specs) == []


def test_conformance_reports_both_directions(tmp_path: Path) -> None:
    path = tmp_path / "metrics.md"
    path.write_text(TABLE)
    specs = load_catalogue(path)
    exposed = exposed_metrics(_exposition())
    assert exposed["mekb_x_events_total"] == "counter"
    problems = conformance("worker", _exposition(), specs)
    assert problems == ["worker exposes mekb_x_unlisted, missing from docs/metrics.md"]
    serving = conformance("serving", _exposition(), specs)
    assert "docs/metrics.md lists mekb_x_model_info for serving, not exposed" in serving


def test_info_metrics_are_named_with_suffix() -> None:
    reg = CollectorRegistry()
    Info("mekb_x_model", "m", registry=reg).info({"version": "v1"})
    assert exposed_metrics(generate_latest(reg).decode()) == {"mekb_x_model_info": "info"}


def test_naming_rules() -> None:
    from monitoring.catalogue import MetricSpec

    bad = {
        "mekb_a_count": MetricSpec("mekb_a_count", "counter", (), "", "w", ""),
        "mekb_b_total": MetricSpec("mekb_b_total", "gauge", (), "", "w", ""),
        "mekb_c_lag": MetricSpec("mekb_c_lag", "gauge", (), "seconds", "w", ""),
        "x_d": MetricSpec("x_d", "gauge", (), "", "w", ""),
    }
    assert len(naming_problems(bad)) == 4
