"""`mekb backfill PATH`: a historic event log into the topics, in event-time order, as
fast as the stream worker applies it (mekb/backfill.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mekb.cli.common import CliError, require_broker, settings_with
from mekb.cli.produce import EXIT_REJECTED


def backfill(
    path: Path = typer.Argument(
        ..., help="A JSONL/CSV file or a directory of them (plain, .gz, .bz2 or .xz)."),
    kind: str = typer.Option(
        "auto", "--type", "-t",
        help="interaction, item, or auto (a record with event_id is an interaction)."),
    sort: bool = typer.Option(
        False, "--sort", help="Sort files that are not in event-time order (bounded memory: "
        "runs of --run-size events spilled to a temporary directory) instead of refusing."),
    run_size: int = typer.Option(
        1_000_000, "--run-size", min=1, help="Events per in-memory sorted run (--sort)."),
    max_lag: int = typer.Option(
        50_000, "--max-lag", min=0,
        help="Records the worker may be behind before sending pauses (flow control)."),
    wait: bool = typer.Option(
        True, "--wait/--no-wait",
        help="Flow control and wait until the worker applied everything (default); "
        "--no-wait sends as fast as the broker takes it and returns."),
    stall_timeout: float = typer.Option(
        120.0, "--stall-timeout", min=1.0,
        help="Seconds without the worker committing anything before giving up."),
    rejects: Path = typer.Option(
        None, "--rejects", help="Where rejected lines go (default PATH.rejected)."),
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: when stderr is a TTY)."),
    ignore_extra_columns: bool = typer.Option(
        False, "--ignore-extra-columns",
        help="CSV: drop columns that are no event field instead of refusing the file."),
    allow_rejects: bool = typer.Option(
        False, "--allow-rejects",
        help=f"Exit 0 even when lines were rejected (default: exit {EXIT_REJECTED})."),
) -> None:
    """Load history: every item first, then every interaction in event-time order (k-way
    merge of the files; an unsorted file is refused unless --sort), paced by the worker's
    consumer lag, with a progress bar and ETA. The worker's state and training examples
    end as if the events had been streamed live; start live traffic afterwards."""
    from mekb.backfill import backfill as run_backfill

    if kind not in ("auto", "interaction", "item"):
        raise CliError(f"--type must be auto, interaction or item, not {kind!r}")
    if not path.exists():
        raise CliError(f"no such file or directory: {path}")
    settings = settings_with()
    require_broker(settings)
    report = run_backfill(
        settings, path, kind=kind,  # type: ignore[arg-type]
        sort=sort, run_size=run_size, max_lag=max_lag, wait=wait,
        stall_timeout_s=stall_timeout, rejects_path=rejects,
        progress=sys.stderr.isatty() if progress is None else progress,
        ignore_extra_columns=ignore_extra_columns,
    )
    typer.echo(report.summary())
    rejected = sum(report.rejected.values())
    if rejected and not allow_rejects:
        typer.echo(f"mekb: {rejected} lines rejected (see {report.rejects_path}; "
                   "--allow-rejects exits 0)", err=True)
        raise typer.Exit(EXIT_REJECTED)
