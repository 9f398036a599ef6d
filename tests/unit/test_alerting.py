"""Alert rules pass promtool's checks and unit tests; dashboards are generated and
reference only catalogued metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring.catalogue import load_catalogue
from monitoring.grafana import DASHBOARDS, queried_metrics, render
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "mekb.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "mekb.rules.test.yml"
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_prometheus_config() -> None:
    result = _promtool("check", "config", "--syntax-only",
                       str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                tested.add(check["alertname"])
    assert alerts == tested, f"alerts never shown firing: {sorted(alerts - tested)}"


_METRIC = re.compile(r"\b(mekb_[a-z0-9_]+)")


def _family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        name = name.removesuffix(suffix)
    return name


@pytest.mark.parametrize("source", ["rules", "dashboards"])
def test_alerts_and_dashboards_use_only_catalogued_metrics(source: str) -> None:
    catalogue = load_catalogue()
    if source == "rules":
        used = {_family(m) for m in _METRIC.findall(RULES.read_text())}
    else:
        used = queried_metrics()
    assert used, "no metrics found: the check would be vacuous"
    missing = sorted(used - set(catalogue))
    assert not missing, f"{source} use metrics missing from docs/metrics.md: {missing}"


def test_committed_dashboards_match_their_specs() -> None:
    for dashboard in DASHBOARDS:
        path = DASHBOARD_DIR / f"{dashboard.uid}.json"
        assert path.exists(), f"run `python -m monitoring.grafana` to write {path.name}"
        assert json.loads(path.read_text()) == render(dashboard), (
            f"{path.name} is out of date: run `python -m monitoring.grafana`"
        )


def test_dashboard_panels_are_laid_out_without_overlap() -> None:
    for dashboard in DASHBOARDS:
        model = render(dashboard)
        cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in model["panels"]}
        assert len(cells) == len(model["panels"])
        assert all(p["targets"] and p["datasource"]["uid"] == "prometheus"
                   for p in model["panels"])
