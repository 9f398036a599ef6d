"""The item agent's batch core: parse `items` records, link each changed item once
(one `link_many` call per batch), produce `item-entities` records.

An item event whose content (everything but `ts`) is unchanged since it was last
linked is not linked again; a changed one is re-linked and replaces the old entry.
Past interactions keep the counts they were applied with (MeKBs aggregate events
as they happened).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from linker.base import Linker
from mekb.events import EventError, ItemEvent, parse_item
from streams.catalog import ItemCatalog, LinkedItem
from streams.partition import InRecord, Output, dead_letter

logger = logging.getLogger(__name__)


def item_digest(item: ItemEvent) -> str:
    body = item.model_dump_json(exclude={"ts"}, exclude_none=True).encode()
    return hashlib.blake2b(body, digest_size=12).hexdigest()


@dataclass
class ItemBatch:
    """Items to link plus what needs no linking (dead letters, unchanged items)."""

    partition: int
    to_link: list[ItemEvent] = field(default_factory=list)
    dead_letters: list[Output] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    next_offset: int | None = None


def prepare(records: Sequence[InRecord], partition: int, catalog: ItemCatalog) -> ItemBatch:
    batch = ItemBatch(partition)
    latest: dict[str, ItemEvent] = {}
    for rec in records:
        batch.next_offset = rec.offset + 1
        try:
            item = parse_item(rec.value)
        except EventError as exc:
            batch.dead_letters.append(dead_letter(rec, partition, exc.reason, exc.field,
                                                  exc.message))
            batch.reasons[exc.reason] += 1
            batch.outcomes["dead_letter"] += 1
            continue
        latest[item.item_id] = item  # a later update of the same item in the batch wins
    for item in latest.values():
        known = catalog.get(item.item_id)
        if known is not None and known.digest == item_digest(item):
            batch.outcomes["unchanged"] += 1
        else:
            batch.to_link.append(item)
    return batch


def link_items(linker: Linker, items: Sequence[ItemEvent]) -> list[LinkedItem]:
    """Link a batch (blocking: the worker runs this in a thread)."""
    if not items:
        return []
    linked = linker.link_many(items)
    return [
        LinkedItem(item.item_id, item.domain,
                   tuple((e.entity_id, e.title, e.weight) for e in entities),
                   item_digest(item))
        for item, entities in zip(items, linked, strict=True)
    ]
