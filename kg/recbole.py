"""RecBole atomic knowledge-graph files: `<name>.kg` (header `head_id:token
relation_id:token tail_id:token`) and `<name>.link` (`item_id:token entity_id:token`).

ml-100k's (Freebase ids, e.g. `m.04ctbw8  film.producer.film  m.0bln8`) ship with PyPI
`recbole` 1.2.1 under `recbole/dataset_example/ml-100k/`; `ml100k_kg()` reads them
from the installed wheel (never a committed copy). Rows are streamed; a row with the
wrong number of fields or an empty id is skipped and counted in the report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from kg.builder import BuildReport, GraphBuilder
from kg.graph import KGError, KnowledgeGraph

logger = logging.getLogger(__name__)


def _rows(path: Path, fields: tuple[str, ...], report: BuildReport) -> Iterator[tuple[str, ...]]:
    """The `fields` columns of each data row (the header names them, in any order)."""
    if not path.is_file():
        raise KGError(f"{path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = [h.split(":")[0] for h in fh.readline().rstrip("\r\n").split("\t")]
        missing = [f for f in fields if f not in header]
        if missing:
            raise KGError(f"{path}: header {header} lacks {missing}")
        cols = [header.index(f) for f in fields]
        for n, line in enumerate(fh, 2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            report.rows += 1
            parts = line.split("\t")
            if len(parts) != len(header):
                report.skip(f"{len(parts)} fields, expected {len(header)}", f"{path}:{n}")
                continue
            values = tuple(parts[c].strip() for c in cols)
            if not all(values):
                report.skip("empty id", f"{path}:{n}")
                continue
            yield values


def load_atomic_kg(directory: Path, name: str | None = None) -> tuple[KnowledgeGraph, BuildReport]:
    """The graph of `DIR/NAME.kg` with the item links of `DIR/NAME.link` (optional file)."""
    directory = Path(directory)
    name = name or directory.name
    builder = GraphBuilder(f"recbole:{directory / name}")
    for head, rel, tail in _rows(directory / f"{name}.kg", ("head_id", "relation_id", "tail_id"),
                                 builder.report):
        builder.add_triple(head, rel, tail)
    link = directory / f"{name}.link"
    if link.is_file():
        for item, entity in _rows(link, ("item_id", "entity_id"), builder.report):
            builder.add_link(item, entity)
    graph = builder.finish()
    return graph, builder.report


def ml100k_kg() -> tuple[KnowledgeGraph, BuildReport]:
    """ml-100k's Freebase graph and item links, from the installed recbole wheel."""
    from mekb.sample import ml100k_dir

    return load_atomic_kg(ml100k_dir(), "ml-100k")
