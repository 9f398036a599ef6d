"""`mekb up`: the whole system on the embedded default, one command."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import typer

from mekb.cli.common import settings_with

logger = logging.getLogger(__name__)


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
        False, "--once", help="Stop everything after the replay instead of waiting for Ctrl-C."
    ),
) -> None:
    """Start the embedded broker, create topics, start every component, replay the sample.

    Logs of each process go to $MEKB_DATA_DIR/logs/<name>.log and, prefixed, to stdout.
    Ctrl-C stops everything cleanly.
    """
    from mekb.broker import EmbeddedBroker
    from mekb.components import components
    from mekb.produce import produce_file
    from mekb.sample import write_sample
    from mekb.supervisor import Supervisor
    from mekb.topics import create_topics

    base = settings_with(broker_port=port)
    data_dir = base.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    with EmbeddedBroker(base.broker_port, log_path=log_dir / "broker.log") as broker:
        broker.write_address(base.broker_file)
        settings = settings_with(
            bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
            data_dir=data_dir, broker_port=broker.port,
        )
        env = {
            "MEKB_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "MEKB_BROKER_FLAVOR": "tansu",
            "MEKB_DATA_DIR": str(data_dir),
        }
        supervisor = Supervisor(log_dir, env)
        try:
            created = create_topics(settings)
            typer.echo(f"broker {broker.bootstrap_servers}; topics created: {len(created)}")
            for comp in components(settings):
                supervisor.start(comp)
            supervisor.wait_healthy()
            items, interactions = write_sample(data_dir / "sample", limit=limit)
            tty = sys.stderr.isatty()
            for path in (items, interactions):
                if stop.is_set():
                    break
                report = produce_file(settings, path, rate=rate if path == interactions else 0.0,
                                      progress=tty)
                typer.echo(f"replayed {path.name}: {report.summary()}")
            typer.echo(
                f"\nMeKB-Stream is up. Broker: {broker.bootstrap_servers}  Logs: {log_dir}\n"
                "Ctrl-C stops everything."
            )
            while not once and not stop.wait(1.0):
                supervisor.check_alive()
        finally:
            supervisor.stop_all()
            base.broker_file.unlink(missing_ok=True)
    typer.echo("stopped")
