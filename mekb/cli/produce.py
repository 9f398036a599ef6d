"""`mekb produce FILE`: validate and push events from JSONL/CSV into Kafka."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mekb.cli.common import CliError, require_broker, settings_with

# Exit status when the run completed but some lines were rejected (1 = error, nothing
# or not everything sent; 2 = usage error).
EXIT_REJECTED = 3


def produce(
    file: Path = typer.Argument(
        ..., help="JSONL or CSV file of events (optionally .gz, .bz2 or .xz)."),
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
    ignore_extra_columns: bool = typer.Option(
        False, "--ignore-extra-columns",
        help="CSV: drop columns that are no event field (and cells beyond the header) "
        "instead of refusing the file.",
    ),
    allow_rejects: bool = typer.Option(
        False, "--allow-rejects",
        help=f"Exit 0 even when lines were rejected (default: exit {EXIT_REJECTED}).",
    ),
) -> None:
    """Send events to `interactions`/`items`; rejected lines (invalid event, not UTF-8,
    extra CSV cells) are counted and written out, and make the exit status 3 unless
    --allow-rejects. An unknown CSV column stops the run before anything is sent."""
    from mekb.produce import produce_file

    if kind not in ("auto", "interaction", "item"):
        raise CliError(f"--type must be auto, interaction or item, not {kind!r}")
    if not file.is_file():
        raise CliError(f"no such file: {file}")
    settings = settings_with(produce_rate=rate)
    require_broker(settings)
    # (a ProduceError, e.g. an unknown CSV column, is printed as one line by mekb.cli.main)
    report = produce_file(
        settings, file, kind=kind,  # type: ignore[arg-type]
        rate=settings.produce_rate, rejects_path=rejects, limit=limit,
        progress=sys.stderr.isatty() if progress is None else progress,
        ignore_extra_columns=ignore_extra_columns,
    )
    typer.echo(report.summary())
    if report.total_rejected and not allow_rejects:
        typer.echo(f"mekb: {report.total_rejected} lines rejected (see {report.rejects_path}; "
                   f"--allow-rejects exits 0)", err=True)
        raise typer.Exit(EXIT_REJECTED)
