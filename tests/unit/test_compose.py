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


def test_compose_file_validates() -> None:
    tool = require_tool("docker-compose")
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "test-only"}
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_requires_grafana_password_from_environment() -> None:
    tool = require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60,
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_has_the_production_services_and_no_literal_secrets() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"kafka", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name, service in services.items():
        env = service.get("environment", {}) or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|KEY", key):
                assert str(value).startswith("${"), f"{name}.{key} is hard-coded"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"
