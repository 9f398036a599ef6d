"""The item -> entities table every worker reads (a replica of the compacted
`item-entities` topic, the equivalent of a Faust GlobalTable)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streams.codec import dumps, loads

# (entity_id, title, weight)
Entity = tuple[str, str, float]


@dataclass(frozen=True)
class LinkedItem:
    item_id: str
    domain: str
    entities: tuple[Entity, ...]
    digest: str  # content hash of the item event that was linked (skip unchanged re-sends)

    def encode(self) -> bytes:
        return dumps({
            "v": 1, "item_id": self.item_id, "domain": self.domain, "digest": self.digest,
            "entities": [list(e) for e in self.entities],
        })

    @classmethod
    def decode(cls, raw: bytes) -> LinkedItem:
        obj: dict[str, Any] = loads(raw)
        ents = tuple((str(e[0]), str(e[1]), float(e[2])) for e in obj["entities"])
        return cls(str(obj["item_id"]), str(obj["domain"]), ents, str(obj.get("digest", "")))


class ItemCatalog:
    """item_id -> LinkedItem, entity -> title; remembers which items arrived since the
    MeKB agent last looked, so parked interactions can be applied."""

    def __init__(self) -> None:
        self.items: dict[str, LinkedItem] = {}
        self.titles: dict[str, str] = {}
        self._fresh: set[str] = set()

    def put(self, item: LinkedItem) -> None:
        self.items[item.item_id] = item
        for entity_id, title, _ in item.entities:
            self.titles[entity_id] = title
        self._fresh.add(item.item_id)

    def put_many(self, items: Sequence[LinkedItem]) -> None:
        for item in items:
            self.put(item)

    def get(self, item_id: str) -> LinkedItem | None:
        return self.items.get(item_id)

    def title(self, entity_id: str) -> str:
        title = self.titles.get(entity_id)
        return title if title is not None else entity_id.split(":", 1)[-1]

    def take_fresh(self) -> set[str]:
        fresh, self._fresh = self._fresh, set()
        return fresh

    def __len__(self) -> int:
        return len(self.items)
