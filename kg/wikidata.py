"""Entity -> entity claims from a Wikidata JSON dump (`latest-all.json[.bz2|.gz]`, or
plain JSON lines), read with the linker's streaming reader (`linker.wikidata.entities`
over `linker.dumps.DumpReader`), one pass, constant memory beyond the graph itself.

A triple is a statement whose main value is another item: (Q42, P69, Q691283).
Other values (strings, dates, quantities) are no entity -> entity edge and are not
counted as bad. An entity is named `kb:<its <lang>wiki title>` — the id the linker
gives it (linker/alias_table.py), so the graph joins the live graph's item ->
`kb:` edges (kg/live.py) — or `wd:<QID>` when it has no such sitelink (yet) in the
dump. Bad rows — a line that is not JSON, an object without an id, a malformed
statement — are counted by reason and skipped.

`keep`: only statements of these heads (QIDs or `kb:` titles; e.g. the entities the
linker found in a catalogue) — how a full dump becomes a graph of a few MB.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from typing import Any

from kg.builder import BuildReport, GraphBuilder
from kg.graph import KnowledgeGraph
from linker.base import KB
from linker.dumps import DumpReader
from linker.wikidata import entities

logger = logging.getLogger(__name__)


def _claims(entity: dict[str, Any], where: str, report: BuildReport,
            properties: Collection[str] | None) -> list[tuple[str, str]]:
    """(property, target QID) of the entity-valued statements."""
    out: list[tuple[str, str]] = []
    claims = entity.get("claims") or {}
    if not isinstance(claims, dict):
        report.skip("claims is not an object", where)
        return out
    for prop, statements in claims.items():
        if properties is not None and prop not in properties:
            continue
        if not isinstance(statements, list):
            report.skip("statements is not a list", where)
            continue
        for st in statements:
            snak = st.get("mainsnak") if isinstance(st, dict) else None
            if not isinstance(snak, dict):
                report.skip("statement without a mainsnak", where)
                continue
            if snak.get("snaktype", "value") != "value":
                continue  # "somevalue" / "novalue": no target entity
            value = snak.get("datavalue")
            if not isinstance(value, dict):
                report.skip("value snak without a datavalue", where)
                continue
            if value.get("type") != "wikibase-entityid":
                continue
            target = value.get("value")
            qid = target.get("id") if isinstance(target, dict) else None
            if not isinstance(qid, str) or not qid:
                report.skip("entity value without an id", where)
                continue
            out.append((prop, qid))
    return out


def build_wikidata_kg(
    dump: str | os.PathLike[str], *, lang: str = "en",
    properties: Collection[str] | None = None, keep: Collection[str] | None = None,
    progress: bool = False,
) -> tuple[KnowledgeGraph, BuildReport]:
    builder = GraphBuilder(f"wikidata:{dump}")
    report = builder.report
    names: dict[str, str] = {}  # QID -> kb:<title>
    labels: dict[str, str] = {}
    keep_set = set(keep) if keep is not None else None
    with DumpReader(dump, progress="reading dump" if progress else None) as reader:
        def bad(reason: str, where: str) -> None:
            report.rows += 1
            report.skip(reason, where)

        for n, entity in enumerate(entities(reader, on_bad=bad), 1):
            report.rows += 1
            where = f"{dump}: entity {n}"
            qid = entity.get("id")
            if not isinstance(qid, str) or not qid:
                report.skip("entity without an id", where)
                continue
            site = (entity.get("sitelinks") or {}).get(f"{lang}wiki")
            title = site.get("title") if isinstance(site, dict) else None
            if title:
                names[qid] = f"{KB}:{title}"
            label = ((entity.get("labels") or {}).get(lang) or {}).get("value")
            if label or title:
                labels[qid] = str(title or label)
            if keep_set is not None and qid not in keep_set and names.get(qid) not in keep_set:
                continue
            for prop, target in _claims(entity, where, report, properties):
                builder.add_triple(qid, prop, target)
    raw = builder.finish()
    # Rename QIDs once every sitelink is known (a claim may name an entity before its line).
    ents = tuple(names.get(q, f"wd:{q}") for q in raw.entities)
    titles = {i: labels[q] for i, q in enumerate(raw.entities) if q in labels}
    return KnowledgeGraph(ents, raw.relations, raw.triples, {}, titles), report


def link_items(graph: KnowledgeGraph, item_entities: dict[str, list[Any]]) -> KnowledgeGraph:
    """`graph` with item links: each item to those of its linked entities (objects with
    `entity_id`, e.g. `LinkedEntity`) that are in the graph."""
    index = graph.entity_index()
    links = {}
    for item, ents in item_entities.items():
        found = tuple(dict.fromkeys(index[e.entity_id] for e in ents if e.entity_id in index))
        if found:
            links[item] = found
    return KnowledgeGraph(graph.entities, graph.relations, graph.triples, links, graph.titles)
