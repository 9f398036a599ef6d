"""`mekb up`: the whole system on the embedded default, one command."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mekb.cli.common import CliError, settings_with
from mekb.settings import Settings

if TYPE_CHECKING:
    from mekb.supervisor import Supervisor

logger = logging.getLogger(__name__)

# Trainer cadence of the demo, unless set in the environment: the first version with
# items (which recommendations need) a minute after the replay starts.
DEMO_DEFAULTS = {"MEKB_TRAINER_PUBLISH_INTERVAL_S": "60"}


def component_env(bootstrap: str, data_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """What `mekb up` adds to its children's environment: the embedded broker, the data
    directory and the demo defaults. The demo should show recommendations within a
    minute or two, not after the production cadence (5,000 examples or 15 minutes), so
    DEMO_DEFAULTS apply unless `environ` sets them."""
    env = {"MEKB_BOOTSTRAP_SERVERS": bootstrap, "MEKB_BROKER_FLAVOR": "tansu",
           "MEKB_DATA_DIR": str(data_dir)}
    env.update({k: v for k, v in DEMO_DEFAULTS.items() if k not in environ})
    return env


def up(
    rate: float = typer.Option(
        2000.0, "--rate", "-r", min=0.0, help="Replay rate of the sample in events/s (0 = max)."
    ),
    limit: int = typer.Option(
        None, "--limit", min=1, help="Replay only the first N ratings (default: all 100k)."
    ),
    port: int = typer.Option(
        None, "--port", "-p", min=0, max=65535, help="Broker port (default: a free port)."
    ),
    once: bool = typer.Option(
        False, "--once",
        help="Stop everything once the replay is done and a model serves embeddings, instead "
        "of running until Ctrl-C.",
    ),
    prometheus: bool = typer.Option(
        None, "--prometheus/--no-prometheus",
        help="Start a local Prometheus scraping every process (default: when the "
        "`prometheus` binary is installed).",
    ),
    prometheus_port: int = typer.Option(
        9090, "--prometheus-port", min=1, max=65535, help="Port of the local Prometheus."
    ),
    ready_timeout: float = typer.Option(
        900.0, "--ready-timeout", min=1.0,
        help="Seconds to wait for the first model version to serve embeddings.",
    ),
) -> None:
    """Run the whole system: embedded broker, topics, stream worker, trainer, serving,
    drift monitor (and a local Prometheus when installed), then replay the bundled
    MovieLens-100k sample and print where to fetch embeddings and metrics.

    Logs of each process go to $MEKB_DATA_DIR/logs/<name>.log and, prefixed, to stdout.
    The first run builds the default entity alias table (a minute or two, once).
    Ctrl-C stops everything cleanly.
    """
    from mekb.broker import EmbeddedBroker
    from mekb.components import components, scrape_targets
    from mekb.produce import produce_file
    from mekb.sample import write_sample
    from mekb.supervisor import Supervisor
    from mekb.topics import create_topics
    from monitoring.local_prometheus import prometheus_binary, prometheus_component

    base = settings_with(broker_port=port)
    data_dir = base.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    prom_binary = prometheus_binary()
    if prometheus and prom_binary is None:
        raise CliError("--prometheus: no `prometheus` binary on PATH (apt-get install "
                       "prometheus), or run without it")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    tty = sys.stderr.isatty()

    with EmbeddedBroker(base.broker_port, log_path=log_dir / "broker.log") as broker:
        broker.write_address(base.broker_file)
        settings = settings_with(
            bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
            data_dir=data_dir, broker_port=broker.port,
        )
        env = component_env(broker.bootstrap_servers, data_dir, os.environ)
        supervisor = Supervisor(log_dir, env)
        try:
            created = create_topics(settings)
            typer.echo(f"broker {broker.bootstrap_servers}; topics created: {len(created)}")
            _ensure_alias_table(settings, progress=tty)
            for comp in components(settings):
                supervisor.start(comp)
            prom_url = None
            if prom_binary and prometheus is not False:
                supervisor.start(prometheus_component(
                    prom_binary, data_dir, prometheus_port, scrape_targets(settings)))
                prom_url = f"http://127.0.0.1:{prometheus_port}"
            supervisor.wait_healthy(timeout_s=300.0)
            items, interactions = write_sample(data_dir / "sample", limit=limit)
            for path in (items, interactions):
                if stop.is_set():
                    break
                report = produce_file(settings, path, rate=rate if path == interactions else 0.0,
                                      progress=tty)
                typer.echo(f"replayed {path.name}: {report.summary()}")
            version = _wait_serving_ready(settings, supervisor, stop, ready_timeout)
            if version:
                typer.echo(_banner(settings, version, log_dir, prom_url, once=once))
            while not once and not stop.wait(1.0):
                supervisor.check_alive()
        finally:
            supervisor.stop_all()
            base.broker_file.unlink(missing_ok=True)
    typer.echo("stopped")


def _ensure_alias_table(settings: Settings, *, progress: bool) -> None:
    from linker.default import ensure_default_table
    from linker.factory import alias_table_path

    path = alias_table_path(settings)
    if not (path / "meta.json").exists():
        typer.echo(f"building the default entity alias table at {path} (once, ~2 minutes)")
    ensure_default_table(settings, progress=progress)


def _wait_serving_ready(settings: Settings, supervisor: Supervisor, stop: threading.Event,
                        timeout_s: float) -> str | None:
    """The active model version once serving answers /readyz, else None (stopped)."""
    import json

    from mekb.supervisor import ComponentFailed
    url = f"http://127.0.0.1:{settings.serving_port}/readyz"
    deadline = time.monotonic() + timeout_s
    typer.echo("waiting for the trainer's first model version to be served ...")
    while not stop.is_set():
        supervisor.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = json.loads(resp.read() or b"{}")
                return str(body.get("model_version") or body.get("version") or "?")
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ComponentFailed(f"serving not ready after {timeout_s:.0f}s "
                                  f"(see {settings.data_dir / 'logs'})")
        stop.wait(1.0)
    return None


def _banner(settings: Settings, version: str, log_dir: Path, prom_url: str | None, *,
            once: bool) -> str:
    api = f"http://127.0.0.1:{settings.serving_port}"
    lines = [
        "",
        f"MeKB-Stream is up; model {version} serves embeddings.",
        f"  user embedding   curl {api}/v1/users/u1/embedding",
        f"  user's MeKB      curl {api}/v1/users/u1/mekb",
        f"  recommendations  curl '{api}/v1/users/u1/recommendations?domain=action&k=10'",
        "                   (once the trainer has published a version with items: within "
        "MEKB_TRAINER_PUBLISH_INTERVAL_S, 60 s by default in mekb up)",
        f"  API docs         {api}/docs",
        f"  metrics          worker :{settings.worker_port}/metrics, trainer "
        f":{settings.trainer_port}/metrics, serving :{settings.serving_port}/metrics, "
        f"monitor :{settings.monitor_port}/metrics",
    ]
    if prom_url:
        lines.append(f"  prometheus       {prom_url}")
    lines += [f"  logs             {log_dir}",
              "--once: stopping now." if once else "Ctrl-C stops everything."]
    return "\n".join(lines)
