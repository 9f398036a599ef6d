"""`mekb sample`: write the bundled MovieLens-100k sample as event files."""

from __future__ import annotations

from pathlib import Path

import typer

from mekb.cli.common import settings_with


def sample(
    out: Path = typer.Option(None, "--out", help="Output folder (default $MEKB_DATA_DIR/sample)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N ratings in time."),
) -> None:
    """Write items.jsonl and interactions.jsonl (2 genre domains: action, drama)."""
    from mekb.sample import write_sample

    target = out or settings_with().data_dir / "sample"
    items, inter = write_sample(target, limit=limit)
    typer.echo(f"wrote {items} and {inter}")
