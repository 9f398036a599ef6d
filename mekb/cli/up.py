"""`mekb up`: the whole system on the embedded default, one command."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mekb.cli.common import CliError, settings_with
from mekb.cli.up_replay import health
from mekb.settings import Settings, get_settings

if TYPE_CHECKING:
    from mekb.supervisor import Supervisor

logger = logging.getLogger(__name__)

# Trainer cadence of the demo, unless set in the environment: the first version with
# items (which recommendations need) a minute after the replay starts. The model kind:
# EntityGraph trains thousands of examples/s and refreshes an updated user's embedding
# within milliseconds on a CPU (EmbedMe's transformer: a few examples/s there).
DEMO_DEFAULTS = {"MEKB_TRAINER_PUBLISH_INTERVAL_S": "60", "MEKB_MODEL_KIND": "entitygraph"}


def component_env(bootstrap: str, data_dir: Path, environ: Mapping[str, str],
                  settings: Settings | None = None) -> dict[str, str]:
    """What `mekb up` adds to its children's environment: the embedded broker, the data
    directory, the ports (`settings`, flags included) and the demo defaults. The demo
    should show recommendations within a minute or two, not after the production
    cadence (5,000 examples or 15 minutes), so DEMO_DEFAULTS apply unless `environ`
    sets them."""
    env = {"MEKB_BOOTSTRAP_SERVERS": bootstrap, "MEKB_BROKER_FLAVOR": "tansu",
           "MEKB_DATA_DIR": str(data_dir)}
    if settings is not None:
        env.update({f"MEKB_{name.upper()}": str(getattr(settings, name)) for name in PORTS})
    env.update({k: v for k, v in DEMO_DEFAULTS.items() if k not in environ})
    if settings is not None and settings.model_kind is not None:  # --kind, or the env's
        env["MEKB_MODEL_KIND"] = settings.model_kind
    return env


def status_path(settings: Settings) -> Path:
    """The status file the supervisor of a running `mekb up` keeps (read by `mekb status`)."""
    return settings.data_dir / "status.json"


def up(
    rate: float = typer.Option(
        2000.0, "--rate", "-r", min=0.0, help="Replay rate of the sample in events/s (0 = max)."
    ),
    limit: int = typer.Option(
        None, "--limit", min=1, help="Replay only the first N ratings (default: all 100k)."
    ),
    broker_port: int = typer.Option(
        None, "--broker-port", "--port", "-p", min=0, max=65535,
        help="Kafka port of the embedded broker (MEKB_BROKER_PORT; default: a free port). "
        "Not an HTTP port: see --serving-port.",
    ),
    serving_port: int = typer.Option(
        None, "--serving-port", min=0, max=65535,
        help="HTTP API and /metrics of serving (MEKB_SERVING_PORT, default 8470; 0 = a free "
        "port).",
    ),
    worker_port: int = typer.Option(
        None, "--worker-port", min=0, max=65535,
        help="/metrics and /healthz of the stream worker (MEKB_WORKER_PORT, default 9465).",
    ),
    trainer_port: int = typer.Option(
        None, "--trainer-port", min=0, max=65535,
        help="/metrics and /healthz of the trainer (MEKB_TRAINER_PORT, default 9468).",
    ),
    monitor_port: int = typer.Option(
        None, "--monitor-port", min=0, max=65535,
        help="/metrics of the drift monitor (MEKB_MONITOR_PORT, default 9466).",
    ),
    max_restarts: int = typer.Option(
        None, "--max-restarts", min=0,
        help="Restarts of a crashed process allowed within --restart-window before giving "
        "up (MEKB_SUPERVISOR_MAX_RESTARTS, default 5; 0 = a crash stops everything).",
    ),
    restart_window: float = typer.Option(
        None, "--restart-window", min=0.001,
        help="Seconds over which crashes count towards --max-restarts and the backoff "
        "(MEKB_SUPERVISOR_RESTART_WINDOW_S, default 600).",
    ),
    backoff: float = typer.Option(
        None, "--backoff", min=0.0,
        help="Seconds before the first restart; doubled with each further crash, up to "
        "MEKB_SUPERVISOR_BACKOFF_MAX_S (MEKB_SUPERVISOR_BACKOFF_S, default 1).",
    ),
    once: bool = typer.Option(
        False, "--once",
        help="Stop everything once the stream worker has applied the replay and a model "
        "serves embeddings, instead of running until Ctrl-C.",
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
    stall_timeout: float = typer.Option(
        60.0, "--stall-timeout", min=1.0,
        help="Seconds with no model version, the trainer at the end of training-examples "
        "and the stream worker idle, after which the first version is given up on (an "
        "error, not a wait until --ready-timeout).",
    ),
    kind: str = typer.Option(
        None, "--kind", help="Model kind the trainer trains: entitygraph (default: fresh "
        "embeddings within seconds on a CPU) or embedme (a transformer per user; GPU hosts) "
        "(MEKB_MODEL_KIND).",
    ),
) -> None:
    """Run the whole system: embedded broker, topics, stream worker, trainer, serving,
    drift monitor (and a local Prometheus when installed), then replay the bundled
    MovieLens-100k sample and print where to fetch embeddings and metrics.

    Logs of each process go to $MEKB_DATA_DIR/logs/<name>.log and, prefixed, to stdout.

    Ports: --broker-port is the broker's Kafka port; the HTTP ports are --serving-port
    (API and /metrics) and --worker-port, --trainer-port, --monitor-port (/metrics).

    A process that crashes is restarted with exponential backoff (--backoff) while the
    others keep running; more than --max-restarts crashes within --restart-window stop
    everything with an error naming its log. A restarted broker starts empty (it keeps
    topics in memory): the components re-seed it from their local state.
    `mekb status` shows every process.

    The first run builds the default entity alias table (a minute or two, once).
    Ctrl-C stops everything cleanly. Ratings count as replayed into the data directory
    only once the stream worker has made them durable: a stop right after the replay
    waits up to 30 s for that, and the next run sends again the ratings not applied.
    """
    from mekb.broker import EmbeddedBroker
    from mekb.cli.up_replay import replay_items, replay_ratings
    from mekb.components import components, scrape_targets
    from mekb.registry import MODEL_KINDS
    from mekb.sample import write_sample
    from mekb.supervisor import RestartPolicy, Supervisor
    from mekb.topics import create_topics
    from monitoring.local_prometheus import prometheus_binary, prometheus_component

    if kind is not None and kind not in MODEL_KINDS:
        raise CliError(f"unknown model kind {kind!r} (known: {', '.join(MODEL_KINDS)})")
    base = settings_with(
        broker_port=broker_port, model_kind=kind, supervisor_max_restarts=max_restarts,
        supervisor_restart_window_s=restart_window, supervisor_backoff_s=backoff,
        **_resolve_ports({"serving_port": serving_port, "worker_port": worker_port,
                          "trainer_port": trainer_port, "monitor_port": monitor_port}),
    )
    _refuse_port_clash(base)
    data_dir = base.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    _refuse_second_instance(status_path(base))
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
            **{name: getattr(base, name) for name in (*PORTS, *POLICY, "model_kind")},
        )
        env = component_env(broker.bootstrap_servers, data_dir, os.environ, settings)
        policy = RestartPolicy(
            backoff_initial_s=settings.supervisor_backoff_s,
            backoff_max_s=max(settings.supervisor_backoff_s, settings.supervisor_backoff_max_s),
            max_restarts=settings.supervisor_max_restarts,
            window_s=settings.supervisor_restart_window_s,
        )
        supervisor = Supervisor(log_dir, env, policy=policy, status_path=status_path(settings),
                                info={"broker": broker.bootstrap_servers,
                                      "data_dir": str(data_dir)})

        def restart_broker() -> subprocess.Popen[bytes]:
            # Tansu keeps topics in memory only: the new broker starts empty on the same
            # port. Components notice the new incarnation (topic ids) and re-seed it.
            broker.start()
            create_topics(settings)
            broker.write_address(base.broker_file)
            assert broker.process is not None
            return broker.process

        assert broker.process is not None
        supervisor.adopt("broker", broker.process, log_dir / "broker.log", restart_broker)
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
            supervisor.wait_healthy(timeout_s=300.0, stop=stop)
            items, interactions = write_sample(data_dir / "sample", limit=limit)
            replay_items(settings, supervisor, stop, items, progress=tty)
            if not stop.is_set():
                replay_ratings(settings, supervisor, stop, interactions, rate=rate,
                               progress=tty)
            version = None if stop.is_set() else _wait_serving_ready(
                settings, supervisor, stop, ready_timeout, stall_timeout,
                env["MEKB_MODEL_KIND"])
            if version:
                from mekb.registry import Registry, registry_root

                served = Registry(registry_root(settings)).get(version).model_kind
                typer.echo(_banner(settings, version, log_dir, prom_url, once=once,
                                   model_kind=served, trainer_kind=env["MEKB_MODEL_KIND"]))
            while not once and not stop.wait(0.5):
                supervisor.check()
        finally:
            supervisor.stop_all()
            base.broker_file.unlink(missing_ok=True)
    typer.echo("stopped")


# Settings `mekb up` hands to its children, flags included.
PORTS = ("serving_port", "worker_port", "trainer_port", "monitor_port")
POLICY = ("supervisor_max_restarts", "supervisor_restart_window_s", "supervisor_backoff_s",
          "supervisor_backoff_max_s")


def _resolve_ports(flags: dict[str, int | None]) -> dict[str, int | None]:
    """Port 0 (from a flag or the environment) becomes a free port here, so the health
    URLs and the banner name the port the process really binds."""
    from mekb.broker import free_port

    env = get_settings()
    resolved: dict[str, int | None] = {}
    for name, value in flags.items():
        port = getattr(env, name) if value is None else value
        resolved[name] = free_port() if port == 0 else value
    return resolved


def _refuse_port_clash(settings: Settings) -> None:
    """Two components on one HTTP port: one could not bind, and the other's answers would
    be taken for its health."""
    owners: dict[int, list[str]] = {}
    for name in PORTS:
        owners.setdefault(int(getattr(settings, name)), []).append(name.removesuffix("_port"))
    clashes = [f"{' and '.join(names)} on {port}" for port, names in owners.items()
               if len(names) > 1]
    if clashes:
        raise CliError(f"one port for two components: {'; '.join(clashes)} (set "
                       "--serving-port, --worker-port, --trainer-port, --monitor-port apart)")


def _refuse_second_instance(path: Path) -> None:
    """Two `mekb up` on one data directory would share RocksDB state and ports."""
    from mekb.cli.status import read_status, supervisor_alive

    status = read_status(path)
    if status is not None and supervisor_alive(status):
        raise CliError(f"`mekb up` already runs on {path.parent} (pid "
                       f"{status['supervisor_pid']}); see `mekb status`")


def _ensure_alias_table(settings: Settings, *, progress: bool) -> None:
    from linker.default import ensure_default_table
    from linker.factory import alias_table_path

    path = alias_table_path(settings)
    if not (path / "meta.json").exists():
        typer.echo(f"building the default entity alias table at {path} (once, ~2 minutes)")
    ensure_default_table(settings, progress=progress)


class _Stall:
    """Tells a first model version that will not come from a slow one: the trainer is at
    the end of training-examples and neither it nor the stream worker (batches, items)
    has moved for `stall_s` seconds, so no example is on its way."""

    def __init__(self, settings: Settings, stall_s: float) -> None:
        self.settings = settings
        self.stall_s = stall_s
        self.seen: tuple[Any, ...] | None = None
        self.since = time.monotonic()

    def check(self) -> int | None:
        """Training-examples records the trainer consumed, once stalled; else None."""
        trainer = health(self.settings.trainer_port)
        worker = health(self.settings.worker_port)
        now = time.monotonic()
        if trainer is None or worker is None or not trainer.get("caught_up"):
            self.seen = None
            return None
        seen = (trainer.get("records"), worker.get("batches"), worker.get("items"))
        if seen != self.seen:
            self.seen, self.since = seen, now
            return None
        return int(trainer.get("records") or 0) if now - self.since >= self.stall_s else None


def _wait_serving_ready(settings: Settings, supervisor: Supervisor, stop: threading.Event,
                        timeout_s: float, stall_s: float, model_kind: str) -> str | None:
    """The active model version once serving answers /readyz, else None (stopped).
    ComponentFailed after `timeout_s`, or once no version can come (`_Stall`)."""
    from mekb.registry import Registry, registry_root
    from mekb.supervisor import ComponentFailed

    url = f"http://127.0.0.1:{settings.serving_port}/readyz"
    registry = Registry(registry_root(settings))
    stall = _Stall(settings, stall_s)
    deadline = time.monotonic() + timeout_s
    typer.echo("waiting for the trainer's first model version to be served ...")
    while not stop.is_set():
        supervisor.check()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = json.loads(resp.read() or b"{}")
            if isinstance(body, dict):
                return str(body.get("model_version") or body.get("version") or "?")
        except (OSError, ValueError):  # not up yet, or not serving's answer
            pass
        consumed = stall.check() if registry.active_version() is None else None
        if consumed is not None:
            read = f"all {consumed} training examples" if consumed else "no training example"
            raise ComponentFailed(
                f"no model version: the trainer read {read} and nothing moved for "
                f"{stall_s:.0f}s, so its first {model_kind} version will "
                "not come (EntityGraph's needs examples of users who already have "
                "entities: replay more ratings, --limit); logs: "
                f"{settings.data_dir / 'logs'}/{{trainer,worker}}.log")
        if time.monotonic() > deadline:
            raise ComponentFailed(f"serving not ready after {timeout_s:.0f}s (no model version "
                                  f"served yet); logs: {settings.data_dir / 'logs'}/"
                                  "{trainer,serving}.log")
        stop.wait(1.0)
    return None


def _banner(settings: Settings, version: str, log_dir: Path, prom_url: str | None, *,
            once: bool, model_kind: str, trainer_kind: str) -> str:
    api = f"http://127.0.0.1:{settings.serving_port}"
    lines = [
        "",
        f"MeKB-Stream is up; model {version} ({model_kind}) serves embeddings.",
        f"  model kind       the trainer trains {trainer_kind} (`mekb up --kind "
        "entitygraph|embedme`; README \"Model kinds\")",
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
