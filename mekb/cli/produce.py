"""`mekb produce FILE`: validate and push events from JSONL/CSV into Kafka."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mekb.cli.common import CliError, settings_with


def produce(
    file: Path = typer.Argument(..., help="JSONL or CSV file of events (optionally .gz)."),
    kind: str = typer.Option(
        "auto", "--type", "-t",
        help="interaction, item, or auto (a record with event_id is an interaction).",
    ),
    rate: float = typer.Option(
        None, "--rate", "-r", min=0.0, help="Events per second (env MEKB_PRODUCE_RATE; 0 = max)."
    ),
    rejects: Path = typer.Option(
        None, "--rejects", help="Where rejected lines go (default FILE.rejected)."
    ),
    limit: int = typer.Option(None, "--limit", min=0, help="Stop after this many lines."),
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: when stderr is a TTY)."
    ),
) -> None:
    """Send events to `interactions`/`items`; rejected lines are counted and written out."""
    from mekb.produce import produce_file

    if kind not in ("auto", "interaction", "item"):
        raise CliError(f"--type must be auto, interaction or item, not {kind!r}")
    if not file.is_file():
        raise CliError(f"no such file: {file}")
    settings = settings_with(produce_rate=rate)
    report = produce_file(
        settings, file, kind=kind,  # type: ignore[arg-type]
        rate=settings.produce_rate, rejects_path=rejects, limit=limit,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    typer.echo(report.summary())
