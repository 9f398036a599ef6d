"""`mekb kg ...`: build and inspect knowledge-graph files (kg/, one `.npz` each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mekb.cli.common import CliError

app = typer.Typer(help="Build and inspect knowledge graphs (triples + item links).",
                  no_args_is_help=True)

SOURCE_HELP = (
    "recbole:DIR[:NAME] (atomic .kg + .link), ml100k (the recbole wheel's), "
    "wikidata:DUMP (JSON dump, .bz2/.gz), items:FILE (item-entities records, one JSON "
    "object a line), dataset:SPEC (a `mekb evaluate --dataset` spec's linked items)."
)


def _build(source: str, lang: str) -> tuple[Any, Any]:
    kind, _, arg = source.partition(":")
    if kind == "recbole" and arg:
        from kg.recbole import load_atomic_kg

        directory, _, name = arg.partition(":")
        return load_atomic_kg(Path(directory), name or None)
    if kind == "ml100k":
        from kg.recbole import ml100k_kg

        return ml100k_kg()
    if kind == "wikidata" and arg:
        from kg.wikidata import build_wikidata_kg

        return build_wikidata_kg(arg, lang=lang)
    if kind == "items" and arg:
        from kg.live import build_live_kg

        path = Path(arg)
        if not path.is_file():
            raise CliError(f"{path}: no such file")
        with open(path, "rb") as fh:
            return build_live_kg((line.strip() for line in fh if line.strip()), source=arg)
    if kind == "dataset" and arg:
        from kg.live import dataset_live_kg
        from mekb.cli.train import load

        return dataset_live_kg(load(arg, False))
    raise CliError(f"unknown knowledge-graph source {source!r}: {SOURCE_HELP}")


@app.command()
def build(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="The .npz file to write."),
    lang: str = typer.Option("en", "--lang", help="wikidata: label and sitelink language."),
) -> None:
    """Build a graph from SOURCE; bad rows are skipped, counted and reported."""
    from kg.graph import KGError

    try:
        graph, report = _build(source, lang)
    except KGError as exc:
        raise CliError(str(exc)) from None
    graph.save(out)
    typer.echo(json.dumps({"out": str(out), **graph.summary(), "report": report.as_dict()},
                          indent=2))


@app.command()
def info(path: Path = typer.Argument(..., help="A .npz written by `mekb kg build`.")) -> None:
    """Counts, relations and a few triples of a graph file."""
    from kg.graph import KGError, KnowledgeGraph

    try:
        graph = KnowledgeGraph.load(path)
    except KGError as exc:
        raise CliError(str(exc)) from None
    sample = [[graph.title(int(h)), graph.relations[int(r)], graph.title(int(t))]
              for h, r, t in graph.triples[:5]]
    typer.echo(json.dumps({**graph.summary(), "relations": list(graph.relations[:50]),
                           "sample": sample}, indent=2))
