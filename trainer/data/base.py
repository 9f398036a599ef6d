"""The in-memory dataset every loader produces."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kg.graph import KnowledgeGraph
from linker.base import LinkedEntity, Linker
from linker.domain import Weights, domain_entities
from mekb.events import ItemEvent

logger = logging.getLogger(__name__)


class DatasetError(Exception):
    """A dataset file is missing or malformed (message names the file and line)."""


@dataclass(frozen=True)
class Item:
    item_id: str
    domain: str
    title: str
    text: str = ""
    brand: str | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    domain: str
    rating: float | None  # None = implicit feedback (always a positive)
    ts: float = 0.0


@dataclass
class Dataset:
    """Items (by id), interactions, and each item's entities once linked."""

    name: str
    items: dict[str, Item]
    interactions: list[Interaction]
    entities: dict[str, list[LinkedEntity]] = field(default_factory=dict)
    kg: KnowledgeGraph | None = None  # triples + item links (kg/), when the dataset has one

    def domains(self) -> list[str]:
        return sorted({i.domain for i in self.items.values()})

    def summary(self) -> dict[str, object]:
        by_domain: dict[str, int] = {}
        for it in self.interactions:
            by_domain[it.domain] = by_domain.get(it.domain, 0) + 1
        return {
            "name": self.name, "items": len(self.items),
            "users": len({i.user_id for i in self.interactions}),
            "interactions": len(self.interactions), "by_domain": by_domain,
        }


def item_event(item: Item) -> ItemEvent:
    return ItemEvent(
        item_id=item.item_id, domain=item.domain, title=item.title or item.item_id,
        text=item.text or None, brand=item.brand or None, categories=list(item.categories)[:32],
        ts=0.0,
    )


def link_items(
    dataset: Dataset,
    linker: Linker | None = None,
    *,
    weights: Weights | None = None,
    batch: int = 256,
) -> Dataset:
    """Fill `dataset.entities` for items that have none yet.

    With a linker: its entities (knowledge-base mentions in title/text plus the domain
    entities it adds). Without one: only the domain entities (brand 0.5, category 0.3,
    product 0.1 — paper §4.1), which need no alias table.
    """
    weights = weights or Weights()
    todo = [item for iid, item in dataset.items.items() if iid not in dataset.entities]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        events = [item_event(i) for i in chunk]
        if linker is not None:
            linked = linker.link_many(events)
        else:
            linked = [domain_entities(ev, weights) for ev in events]
        for item, ents in zip(chunk, linked, strict=True):
            dataset.entities[item.item_id] = list(ents)
    return dataset


def read_lines(paths: Sequence[str] | Iterable[str]) -> Iterable[tuple[str, int, str]]:
    """(path, line number, line) of text files, transparently gunzipped."""
    import gzip

    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        yield str(path), n, line
        except FileNotFoundError:
            raise DatasetError(f"{path}: no such file") from None
