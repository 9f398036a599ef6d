"""The live system's own edges, from the item agent's output (`item-entities` records,
streams/catalog.py `LinkedItem`) or an offline dataset's linked items.

Every item is the entity `product:<item_id>` (its `item_links` entry), with one edge to
each entity the linker gave it, the relation named after the entity's namespace —
`kb` (a knowledge-base mention), `brand`, `category` (linker/domain.py) — and one
`domain` edge to `domain:<name>`. Joined with a Wikidata graph (`kg.wikidata`, whose
entities are the same `kb:<title>` ids) this ties catalogue items into the world's
graph. The topic is compacted, so a later record of an item replaces the earlier one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kg.builder import BuildReport, GraphBuilder
from kg.graph import KnowledgeGraph
from linker.base import PRODUCT
from streams.catalog import LinkedItem

logger = logging.getLogger(__name__)

DOMAIN = "domain"


def item_entity(item_id: str) -> str:
    return f"{PRODUCT}:{item_id}"


def build_live_kg(
    records: Iterable[LinkedItem | bytes], *, source: str = "item-entities"
) -> tuple[KnowledgeGraph, BuildReport]:
    builder = GraphBuilder(f"live:{source}")
    report = builder.report
    latest: dict[str, LinkedItem] = {}
    for n, rec in enumerate(records, 1):
        report.rows += 1
        if isinstance(rec, bytes | bytearray):
            try:
                rec = LinkedItem.decode(bytes(rec))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                report.skip(f"undecodable record ({type(exc).__name__})", f"{source}#{n}")
                continue
        if not rec.item_id or not rec.domain:
            report.skip("record without an item id or domain", f"{source}#{n}")
            continue
        latest[rec.item_id] = rec
    for item in latest.values():
        node = item_entity(item.item_id)
        builder.add_link(item.item_id, node)
        builder.add_triple(node, DOMAIN, f"{DOMAIN}:{item.domain}")
        for entity_id, title, _weight in item.entities:
            namespace, sep, key = entity_id.partition(":")
            if not sep or not key:
                report.skip(f"entity id {entity_id!r} has no namespace", item.item_id)
                continue
            if entity_id == node:
                continue  # the product entity is the item itself
            builder.entity(entity_id, title)
            builder.add_triple(node, namespace, entity_id)
    return builder.finish(), report


def dataset_live_kg(dataset: object) -> tuple[KnowledgeGraph, BuildReport]:
    """The same graph from an offline `trainer.data.base.Dataset` (items + entities)."""
    items = dataset.items  # type: ignore[attr-defined]
    entities = dataset.entities  # type: ignore[attr-defined]
    records = (
        LinkedItem(iid, item.domain,
                   tuple((e.entity_id, e.title, e.weight) for e in entities.get(iid, ())), "")
        for iid, item in items.items()
    )
    return build_live_kg(records, source=f"dataset:{dataset.name}")  # type: ignore[attr-defined]
