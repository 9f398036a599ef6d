"""The linker interface every mention-detection backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mekb.events import ItemEvent

# Namespaces keep domain entities from ever colliding with knowledge-base titles.
KB = "kb"
BRAND = "brand"
CATEGORY = "category"
PRODUCT = "product"


@dataclass(frozen=True)
class LinkedEntity:
    """One entity behind an item: `entity_id` is `<namespace>:<key>`, `title` the unique
    human title fed to EmbedMe, `weight` the per-interaction contribution to k."""

    entity_id: str
    title: str
    weight: float
    prior: float = 1.0  # p(e|m) of the chosen candidate; 1.0 for domain entities


class Linker(ABC):
    """Turns item text into weighted entities (MeKB-Rec §3.1)."""

    @abstractmethod
    def link(self, item: ItemEvent) -> list[LinkedEntity]:
        """Entities of one item, each entity once (highest weight kept)."""

    def link_many(self, items: Sequence[ItemEvent]) -> list[list[LinkedEntity]]:
        """Entities of many items; backends override this to batch (e.g. nlp.pipe)."""
        return [self.link(item) for item in items]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release stores or models."""


def dedupe(entities: Iterable[LinkedEntity]) -> list[LinkedEntity]:
    """Keep each entity once, with its highest weight, in first-seen order."""
    best: dict[str, LinkedEntity] = {}
    for ent in entities:
        seen = best.get(ent.entity_id)
        if seen is None or ent.weight > seen.weight:
            best[ent.entity_id] = ent
    return list(best.values())
