"""Domain entities (MeKB-Rec §3.1): brand, category and product, namespaced and weighted.

Their ids are `brand:<name>`, `category:<name>` and `product:<item_id>`, so they never
collide with knowledge-base entities (`kb:<title>`) even when the names are equal.
Brand and category names are NFKC-normalised with whitespace collapsed; case is
kept ("Sci-Fi" and "sci-fi" are different categories, as the catalogue says).
"""

from __future__ import annotations

from dataclasses import dataclass

from linker.base import BRAND, CATEGORY, PRODUCT, LinkedEntity
from linker.normalize import display_key
from mekb.events import ItemEvent


@dataclass(frozen=True)
class Weights:
    """Per-interaction contribution of each kind of entity to k (paper defaults)."""

    kb: float = 1.0
    brand: float = 0.5
    category: float = 0.3
    product: float = 0.1

    @classmethod
    def from_settings(cls, settings: object) -> Weights:
        return cls(
            kb=settings.linker_weight_kb,  # type: ignore[attr-defined]
            brand=settings.linker_weight_brand,  # type: ignore[attr-defined]
            category=settings.linker_weight_category,  # type: ignore[attr-defined]
            product=settings.linker_weight_product,  # type: ignore[attr-defined]
        )


def domain_entities(item: ItemEvent, weights: Weights) -> list[LinkedEntity]:
    """Brand, categories and the product itself; a zero weight leaves that kind out.

    The product's title is the item title as the catalogue gives it; its id is what
    makes it unique (two items may share a title, never an id).
    """
    out: list[LinkedEntity] = []
    if item.brand and weights.brand > 0:
        name = display_key(item.brand)
        if name:
            out.append(LinkedEntity(f"{BRAND}:{name}", name, weights.brand))
    if weights.category > 0:
        for category in item.categories:
            name = display_key(category)
            if name:
                out.append(LinkedEntity(f"{CATEGORY}:{name}", name, weights.category))
    if weights.product > 0:
        out.append(
            LinkedEntity(f"{PRODUCT}:{item.item_id}", display_key(item.title), weights.product)
        )
    return out
