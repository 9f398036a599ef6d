"""`mekb link`: link text or item files to entities and print them with their priors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mekb.cli.common import CliError, settings_with

if TYPE_CHECKING:
    from linker.matching import Link


def link(
    text: str = typer.Argument(None, help="Text to link (or use --file)."),
    file: Path = typer.Option(
        None, "--file", "-f", help="Items as JSON lines (the `items` topic format)."
    ),
    mode: str = typer.Option(
        None, "--mode", envvar="MEKB_LINKER_MODE", help="dictionary or ner."
    ),
    alias_table: Path = typer.Option(
        None, "--alias-table", envvar="MEKB_ALIAS_TABLE",
        help="Alias table directory (default $MEKB_DATA_DIR/alias-table).",
    ),
    min_prior: float = typer.Option(None, "--min-prior", help="AT@1 minimum prior."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per text or item."),
) -> None:
    """Print the entities of a text or of each item, with priors p(e|m).

    For a TEXT: every mention found, the entity AT@1 chose (highest prior) and its
    prior, or "unlinked" when the top candidate is below --min-prior. For --file:
    each item's weighted entities (knowledge base 1.0, brand 0.5, category 0.3,
    product 0.1 by default) and a count of linked and unlinked mentions.

    Examples: mekb link "Inception, directed by Christopher Nolan" ;
    mekb link --mode ner --json "Abbey Road by the Beatles" ;
    mekb link --file items.jsonl
    """
    from linker.factory import build_linker
    from linker.matching import TableLinker
    from mekb.events import EventError, parse_item

    if (text is None) == (file is None):
        raise CliError("give either a TEXT argument or --file ITEMS.jsonl")
    settings = settings_with(linker_mode=mode, alias_table=alias_table, linker_min_prior=min_prior)
    linker = build_linker(settings)
    assert isinstance(linker, TableLinker)
    try:
        if text is not None:
            links = linker.links_texts([text])[0]
            _print_links(links, as_json)
            return
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
        items = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                items.append(parse_item(line))
            except EventError as exc:
                raise CliError(f"{file}:{n}: bad item: {exc}") from None
        for item, ents in zip(items, linker.link_many(items), strict=True):
            if as_json:
                typer.echo(json.dumps({
                    "item_id": item.item_id,
                    "entities": [{"id": e.entity_id, "title": e.title, "weight": e.weight,
                                  "prior": e.prior} for e in ents],
                }, ensure_ascii=False))
                continue
            typer.echo(f"{item.item_id}  {item.title}")
            for e in ents:
                typer.echo(f"    {e.entity_id:<48} weight {e.weight:.2f}  prior {e.prior:.2f}")
        s = linker.stats
        typer.echo(
            f"{s.items} items, {s.mentions} mentions: {s.linked} linked, {s.unlinked} unlinked",
            err=True,
        )
    finally:
        linker.close()


def _print_links(links: list[Link], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"mentions": [
            {"text": lk.mention.text, "start": lk.mention.start, "end": lk.mention.end,
             "id": lk.candidate.entity_id if lk.candidate else None,
             "title": lk.candidate.title if lk.candidate else None,
             "prior": round(lk.candidate.prior, 6) if lk.candidate else None,
             "candidates": lk.n_candidates} for lk in links
        ]}, ensure_ascii=False))
        return
    if not links:
        typer.echo("no mentions found")
    for lk in links:
        if lk.candidate is None:
            typer.echo(f"{lk.mention.text!r:<32} -> unlinked ({lk.n_candidates} candidates "
                       "below the thresholds)")
        else:
            typer.echo(f"{lk.mention.text!r:<32} -> {lk.candidate.entity_id:<40} prior "
                       f"{lk.candidate.prior:.2f} ({lk.n_candidates} candidates)")
