"""docker-compose.yml is valid Compose (checked without an engine) and holds no secrets."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SECRETS = {"GRAFANA_ADMIN_PASSWORD": "test-only", "MEKB_SERVING_API_KEYS": "k1,k2",
           "MEKB_SERVING_ADMIN_KEY": "admin"}


def test_compose_file_validates() -> None:
    tool = require_tool("docker-compose")
    env = {**os.environ, **SECRETS}
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_requires_grafana_password_from_environment() -> None:
    tool = require_tool("docker-compose")
    env = {**{k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"},
           "MEKB_SERVING_API_KEYS": "k", "MEKB_SERVING_ADMIN_KEY": "a"}
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60,
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_has_the_production_services_and_no_literal_secrets() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"kafka", "topics", "worker", "trainer", "serving", "monitor", "prometheus",
            "grafana"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name, service in services.items():
        env = service.get("environment", {}) or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|KEY", key):
                assert str(value).startswith("${"), f"{name}.{key} is hard-coded"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"


def test_prometheus_scrapes_every_mekb_process_with_a_metrics_port() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    scrape = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert {"mekb-worker", "mekb-trainer", "mekb-serving", "mekb-monitor"} <= jobs
    assert scrape["rule_files"], "alert rules are not loaded"
    # processes must bind their /metrics beyond loopback inside containers
    assert doc["x-mekb"]["environment"]["MEKB_METRICS_HOST"] == "0.0.0.0"
    assert doc["services"]["serving"]["environment"]["MEKB_SERVING_HOST"] == "0.0.0.0"


def test_compose_refuses_to_start_serving_without_api_keys() -> None:
    tool = require_tool("docker-compose")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MEKB_SERVING")},
           "GRAFANA_ADMIN_PASSWORD": "x"}
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60,
    )
    assert result.returncode != 0 and "MEKB_SERVING_API_KEYS" in result.stderr
