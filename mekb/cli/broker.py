"""`mekb broker`: run the embedded Kafka-protocol broker in the foreground."""

from __future__ import annotations

import signal
import threading

import typer

from mekb.cli.common import settings_with


def broker(
    port: int = typer.Option(
        None, "--port", "-p", min=0, max=65535,
        help="Port on 127.0.0.1 (env MEKB_BROKER_PORT; 0 = a free port).",
    ),
    create_topics: bool = typer.Option(
        True, "--create-topics/--no-create-topics",
        help="Create every topic of the system once the broker is up.",
    ),
) -> None:
    """Run the embedded Tansu broker on 127.0.0.1 until Ctrl-C / SIGTERM.

    Writes its address to $MEKB_DATA_DIR/broker.json so other `mekb` commands find it
    without MEKB_BOOTSTRAP_SERVERS. Memory-only: topics are gone when it stops.
    """
    from mekb.broker import EmbeddedBroker
    from mekb.topics import create_topics as create

    settings = settings_with(broker_port=port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(settings.broker_port) as running:
        running.write_address(settings.broker_file)
        try:
            if create_topics:
                names = create(settings_with(bootstrap_servers=running.bootstrap_servers,
                                             broker_flavor="tansu"))
                typer.echo(f"created topics: {', '.join(names) or '(all existed)'}")
            typer.echo(f"broker listening on {running.bootstrap_servers} (Ctrl-C stops)")
            stop.wait()
        finally:
            settings.broker_file.unlink(missing_ok=True)
    typer.echo("broker stopped")
