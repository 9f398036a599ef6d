"""`mekb status`: every process of the running `mekb up`, read from the running system.

The supervisor keeps $MEKB_DATA_DIR/status.json current (state, pid, start time,
restarts, last error of every process); this command adds what the processes say
themselves: /healthz, and from /metrics the consumer lag and the active model version.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer

from mekb.cli.common import CliError, settings_with

PROBE_TIMEOUT_S = 1.5
# Per process: the metric whose samples add up to its consumer lag, and the metric and
# label that name its active model version.
LAG_METRICS = {
    "worker": "mekb_streams_consumer_lag_records",
    "trainer": "mekb_trainer_consumer_lag_records",
    "serving": "mekb_serving_replica_lag_records",
}
MODEL_METRICS = {
    "trainer": "mekb_trainer_active_version_info",
    "serving": "mekb_serving_model_info",
}
COLUMNS = ("COMPONENT", "STATE", "PID", "HEALTH", "UPTIME", "RESTARTS", "LAG", "MODEL",
           "LAST ERROR")


def read_status(path: Path) -> dict[str, Any] | None:
    """The supervisor's status file, or None when there is none."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(body, dict) or "supervisor_pid" not in body:
        raise CliError(f"{path} is not a `mekb up` status file")
    return body


def supervisor_alive(status: dict[str, Any]) -> bool:
    try:
        os.kill(int(status["supervisor_pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _get(url: str) -> tuple[int | None, str]:
    """(HTTP status, body) of a GET; (None, reason) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except OSError as exc:
        return None, str(getattr(exc, "reason", exc))


def _broker_health(bootstrap: str | None) -> str:
    if not bootstrap:
        return "-"
    host, _, port = bootstrap.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return "unreachable"
    return "ok"


def _from_metrics(name: str, text: str) -> tuple[int | None, str | None]:
    """(consumer lag, active model version) of process `name` from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    lag: int | None = None
    model: str | None = None
    for family in text_string_to_metric_families(text):
        if family.name == LAG_METRICS.get(name):
            lag = int(sum(s.value for s in family.samples))
        elif family.name == MODEL_METRICS.get(name):
            for sample in family.samples:
                if sample.value == 1 and sample.labels.get("version"):
                    model = sample.labels["version"]
    return lag, model


def probe(comp: dict[str, Any], bootstrap: str | None) -> dict[str, Any]:
    """Health, lag and model of one process, asked live (nothing when it is not running)."""
    out: dict[str, Any] = {"health": "-", "lag": None, "model": None}
    if comp.get("state") not in ("starting", "running"):
        return out
    if comp["name"] == "broker":
        out["health"] = _broker_health(bootstrap)
        return out
    if comp.get("health_url"):
        code, reason = _get(comp["health_url"])
        out["health"] = "ok" if code == 200 else (f"HTTP {code}" if code else "unreachable")
    if comp.get("metrics_url") and (comp["name"] in LAG_METRICS or comp["name"] in MODEL_METRICS):
        code, text = _get(comp["metrics_url"])
        if code == 200:
            out["lag"], out["model"] = _from_metrics(comp["name"], text)
    return out


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


def status(
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
) -> None:
    """Every process of the running `mekb up` (on $MEKB_DATA_DIR): state, pid, health,
    uptime, restarts, consumer lag, active model version and last error.

    Exit code 0 when every process runs and answers its health check, 1 otherwise.
    """
    from mekb.cli.up import status_path

    path = status_path(settings_with()).resolve()
    body = read_status(path)
    if body is None:
        raise CliError(f"nothing runs on {path.parent}: no `mekb up` status file "
                       f"({path.name}); start the system with `mekb up`")
    if not supervisor_alive(body):
        raise CliError(f"nothing runs on {path.parent}: `mekb up` (pid "
                       f"{body['supervisor_pid']}) is gone; its last status is in {path}")
    now = time.time()
    comps = []
    for comp in body.get("components", []):
        live = probe(comp, body.get("broker"))
        running = comp.get("state") == "running"
        comps.append({**comp, **live, "uptime_s": now - comp["started_at"] if running else None})
    healthy = all(c["state"] == "running" and c["health"] == "ok" for c in comps)
    if as_json:
        typer.echo(json.dumps({**body, "components": comps, "healthy": healthy}, indent=1))
    else:
        typer.echo(f"mekb up pid {body['supervisor_pid']}, up {_duration(now - body['started_at'])}"
                   f", broker {body.get('broker', '-')}, logs {body.get('log_dir', '-')}")
        rows = [list(COLUMNS)]
        for c in comps:
            error = c.get("last_error") or "-"
            if c.get("last_error_at"):
                error = f"{_duration(now - c['last_error_at'])} ago: {error}"
            rows.append([
                c["name"], c["state"], str(c.get("pid") or "-"), c["health"],
                _duration(c["uptime_s"]) if c["uptime_s"] is not None else "-",
                str(c.get("restarts", 0)), "-" if c["lag"] is None else str(c["lag"]),
                c["model"] or "-", error,
            ])
        typer.echo(_table(rows))
    if not healthy:
        raise typer.Exit(1)
