"""`mekb dlq list|show|replay`: read the dead-letters topic and replay what was fixed."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mekb.cli.common import CliError, require_broker, settings_with

if TYPE_CHECKING:
    from mekb.dlq import Filter
    from mekb.settings import Settings

app = typer.Typer(
    help="Dead letters: list and show them (reason, original bytes), replay corrected "
    "records or every record of a reason into the topic they came from.",
    no_args_is_help=True,
)

REASON_HELP = "Only this reason (repeatable), e.g. bad_json, key_mismatch, item_unknown."
TIME_HELP = "epoch seconds, ISO-8601 time or an age (30m, 2h, 7d); dead-lettered time."
PREVIEW = 60  # characters of the original shown by `list`


def _filter(reason: list[str] | None, source: str | None, since: str | None,
            until: str | None) -> Filter:
    from mekb.dlq import SOURCES, DlqError, Filter, parse_time

    if source is not None and source not in SOURCES:
        raise CliError(f"--source must be one of {', '.join(SOURCES)}, not {source!r}")
    try:
        return Filter(
            reasons=frozenset(reason or ()), sources=frozenset([source] if source else ()),
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
        )
    except DlqError as exc:
        raise CliError(str(exc)) from None


@contextmanager
def _errors() -> Iterator[None]:
    """What the user can act on, as one `mekb: error:` line: a bad id, time or corrections
    file, an unknown topic, a broker that stopped answering mid-way."""
    from kafka.errors import KafkaError

    from mekb.dlq import DlqError

    try:
        yield
    except DlqError as exc:
        raise CliError(str(exc)) from None
    except KafkaError as exc:
        raise CliError(f"broker: {type(exc).__name__}: {exc}") from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _settings() -> Settings:
    settings = settings_with()
    require_broker(settings)
    return settings


@app.command("list")
def list_(
    reason: list[str] = typer.Option(None, "--reason", "-r", help=REASON_HELP),
    source: str = typer.Option(None, "--source", help="interactions or items."),
    since: str = typer.Option(None, "--since", help="From this time: " + TIME_HELP),
    until: str = typer.Option(None, "--until", help="Before this time: " + TIME_HELP),
    limit: int = typer.Option(None, "--limit", min=1, help="Show at most this many."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per dead letter (every field; `original` "
        "escaped, `original_base64` exact): edit `original` into `event` for replay --file."),
) -> None:
    """List dead letters, oldest first per partition, with a count per reason."""
    from mekb.dlq import read

    keep = _filter(reason, source, since, until)
    settings = _settings()
    counts: Counter[str] = Counter()
    shown = 0
    with _errors():
        for letter in read(settings, keep):
            counts[letter.reason] += 1
            if limit is not None and shown >= limit:
                continue
            shown += 1
            if as_json:
                typer.echo(json.dumps(letter.to_json(), ensure_ascii=False))
                continue
            if shown == 1:
                typer.echo(f"{'ID':<10} {'DEAD-LETTERED':<20} {'REASON':<14} {'SOURCE':<12} "
                           f"{'FIELD':<10} ORIGINAL")
            text = letter.text.replace("\n", "\\n")
            if len(text) > PREVIEW:
                text = text[:PREVIEW - 3] + "..."
            typer.echo(f"{letter.id:<10} {_when(letter.timestamp):<20} {letter.reason:<14} "
                       f"{letter.source:<12} {letter.field:<10} {text}")
    total = sum(counts.values())
    reasons = ", ".join(f"{r}={n}" for r, n in counts.most_common())
    typer.echo(f"{total} dead letters" + (f" ({reasons})" if reasons else "")
               + (f", {shown} shown" if shown < total else ""), err=as_json)


@app.command("show")
def show(dlq_id: str = typer.Argument(..., metavar="ID", help="PARTITION:OFFSET from list.")
         ) -> None:
    """One dead letter: reason, field, error, where it came from, the original bytes."""
    from mekb.dlq import get, parse_id

    with _errors():
        parse_id(dlq_id)
        letter = get(_settings(), dlq_id)
    d = letter.to_json()
    for name in ("id", "reason", "field", "error", "source", "source_partition",
                 "source_offset", "key"):
        typer.echo(f"{name + ':':<17} {d[name]}")
    typer.echo(f"{'dead-lettered:':<17} {_when(letter.timestamp)} ({letter.timestamp:.3f})")
    typer.echo(f"{'bytes:':<17} {len(letter.original)}")
    typer.echo(f"{'original:':<17} {letter.text}")
    typer.echo(f"{'original_base64:':<17} {d['original_base64']}")


@app.command("replay")
def replay(
    file: Path = typer.Option(
        None, "--file", "-f", help="Corrections, JSONL: {\"id\": \"P:O\", \"event\": {...}} "
        "per line (event: the corrected object, or its JSON text)."),
    reason: list[str] = typer.Option(None, "--reason", "-r", help=REASON_HELP),
    source: str = typer.Option(None, "--source", help="interactions or items."),
    since: str = typer.Option(None, "--since", help="From this time: " + TIME_HELP),
    until: str = typer.Option(None, "--until", help="Before this time: " + TIME_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be sent."),
    force: bool = typer.Option(
        False, "--force", help="Also ids already replayed (the ledger in "
        "$MEKB_DATA_DIR/dlq/replayed.jsonl); the worker still drops duplicates by event_id."),
) -> None:
    """Replay into the source topic: the corrected records of --file, or the original
    bytes of every dead letter of --reason (e.g. item_unknown once the item exists,
    key_mismatch: re-keyed by user_id). Each record is validated first; invalid ones
    and ids replayed before are skipped and counted. Exit 3 when some were skipped."""
    from mekb.dlq import read_corrections
    from mekb.dlq import replay as run_replay

    if file is None and not reason:
        raise CliError("give --file with corrections, or --reason to replay every dead "
                       "letter of that reason as it is")
    keep = _filter(reason, source, since, until)
    with _errors():
        corrections = read_corrections(file) if file is not None else None
        settings = _settings()
        report = run_replay(settings, keep, corrections=corrections, dry_run=dry_run,
                            force=force, out=sys.stdout)
    for line in report.problems[:20]:
        typer.echo(f"mekb: {line}", err=True)
    if len(report.problems) > 20:
        typer.echo(f"mekb: ... and {len(report.problems) - 20} more", err=True)
    typer.echo(report.summary(dry_run))
    if report.problems:
        raise typer.Exit(3)
