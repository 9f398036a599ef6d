"""A local Prometheus for `mekb up`, when the `prometheus` binary is installed.

It scrapes every process of the one-machine system on 127.0.0.1 and loads the
same alert rules as production (deploy/prometheus/rules, when running from a
checkout). Optional: without the binary, `mekb up` runs without it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from mekb.supervisor import Component

RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def write_config(path: Path, targets: dict[str, str], *, interval_s: int = 5) -> Path:
    """Prometheus config scraping `targets` ({job: host:port}) every `interval_s`."""
    config = {
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in sorted(targets.items())
        ],
    }
    if RULES_DIR.is_dir():
        config["rule_files"] = [str(RULES_DIR / "*.yml")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def prometheus_component(binary: str, data_dir: Path, port: int,
                         targets: dict[str, str]) -> Component:
    config = write_config(data_dir / "prometheus" / "prometheus.yml", targets)
    return Component(
        "prometheus",
        (f"--config.file={config}", f"--storage.tsdb.path={data_dir / 'prometheus' / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d"),
        health_url=f"http://127.0.0.1:{port}/-/ready",
        executable=(binary,),
    )
