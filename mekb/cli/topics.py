"""`mekb topics`: create and list the system's topics."""

from __future__ import annotations

import typer

from mekb.cli.common import CliError, require_broker, settings_with

app = typer.Typer(help="Create or list the topics MeKB-Stream uses.", no_args_is_help=True)


@app.command("create")
def create(
    partitions: int = typer.Option(
        None, "--partitions", min=1, help="Partitions per topic (env MEKB_PARTITIONS)."
    ),
) -> None:
    """Create every topic (compacted where the topic holds state). Idempotent."""
    from kafka.errors import KafkaError

    from mekb.topics import create_topics

    settings = settings_with(partitions=partitions)
    servers = require_broker(settings)
    try:
        created = create_topics(settings)
    except KafkaError as exc:  # answers TCP, but not (or no longer) the Kafka protocol
        raise CliError(f"broker at {servers}: {type(exc).__name__}: {exc}") from None
    typer.echo(f"created: {', '.join(created) if created else '(all existed)'}")


@app.command("list")
def list_() -> None:
    """List the topics with their cleanup policy and purpose."""
    from mekb.topics import TOPICS

    settings = settings_with()
    for spec in TOPICS:
        policy = "compact" if spec.compacted else "delete"
        typer.echo(f"{settings.topic(spec.name):<24} {policy:<8} {spec.purpose}")
