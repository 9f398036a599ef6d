"""The knowledge graph every model and loader shares.

Entities and relations are interned strings; an index is a position in `entities` /
`relations`. Triples are one int64 [T, 3] array (head, relation, tail), sorted by
head so that `neighbours(e)` is two binary searches (CSR without a second copy).
`item_links` maps a dataset item id to the entity indices that stand for it (a
RecBole `.link` row, the entities the linker found in its title, its brand ...).

Stored as one uncompressed `.npz` (`save`/`load`): the largest graphs the offline
harness uses (ml-100k's ~91 k Freebase triples, a Wikidata slice restricted to linked
entities) are a few MB, read-only while training, and load in milliseconds — a
key-value store would add a dependency and a copy for no lookup we need.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = 1


class KGError(Exception):
    """A knowledge-graph file is missing or malformed (the message names it)."""


@dataclass(frozen=True, eq=False)  # arrays: identity, not element-wise, equality
class KnowledgeGraph:
    entities: tuple[str, ...]  # entity ids; index = position
    relations: tuple[str, ...]
    triples: np.ndarray  # int64 [T, 3]: (head, relation, tail) indices, sorted by head
    item_links: Mapping[str, tuple[int, ...]]  # item_id -> entity indices linked to the item
    titles: Mapping[int, str] = field(default_factory=dict)  # entity index -> title (when known)

    def __post_init__(self) -> None:
        t = np.asarray(self.triples, dtype=np.int64).reshape(-1, 3)
        if len(t):
            order = np.lexsort((t[:, 2], t[:, 1], t[:, 0]))
            t = t[order]
            if t[:, [0, 2]].min() < 0 or t[:, [0, 2]].max() >= len(self.entities):
                raise KGError("triple entity index out of range")
            if t[:, 1].min() < 0 or t[:, 1].max() >= len(self.relations):
                raise KGError("triple relation index out of range")
        t.setflags(write=False)
        object.__setattr__(self, "triples", t)

    # -- lookups ---------------------------------------------------------------
    @cached_property
    def _entity_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.entities)}

    @cached_property
    def _relation_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.relations)}

    def entity_index(self) -> Mapping[str, int]:
        return self._entity_index

    def relation_index(self) -> Mapping[str, int]:
        return self._relation_index

    @property
    def n_entities(self) -> int:
        return len(self.entities)

    @property
    def n_relations(self) -> int:
        return len(self.relations)

    def neighbours(self, entity: int) -> np.ndarray:
        """[k, 2] (relation, tail) of the triples whose head is `entity`."""
        heads = self.triples[:, 0]
        lo, hi = np.searchsorted(heads, entity, "left"), np.searchsorted(heads, entity, "right")
        return self.triples[lo:hi, 1:]

    def title(self, entity: int) -> str:
        return self.titles.get(entity) or self.entities[entity]

    def items_of_entity(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for item, ents in self.item_links.items():
            for e in ents:
                out.setdefault(e, []).append(item)
        return out

    def summary(self) -> dict[str, int]:
        return {"entities": self.n_entities, "relations": self.n_relations,
                "triples": int(len(self.triples)), "linked_items": len(self.item_links)}

    # -- derived graphs --------------------------------------------------------
    def restrict(self, items: Iterable[str], *, hops: int = 1) -> KnowledgeGraph:
        """The sub-graph around `items`: their linked entities, every triple within
        `hops` of them (either direction), entities renumbered compactly."""
        wanted = set(items)
        links = {i: e for i, e in self.item_links.items() if i in wanted}
        keep = np.zeros(self.n_entities, dtype=bool)
        for ents in links.values():
            keep[list(ents)] = True
        t = self.triples
        mask = np.zeros(len(t), dtype=bool)
        frontier = keep.copy()
        for _ in range(hops):
            step = frontier[t[:, 0]] | frontier[t[:, 2]]
            mask |= step
            reached = np.zeros_like(keep)
            reached[t[step, 0]] = True
            reached[t[step, 2]] = True
            frontier = reached & ~keep
            keep |= reached
        sub = t[mask]
        old = np.flatnonzero(keep)
        new_of = np.full(self.n_entities, -1, dtype=np.int64)
        new_of[old] = np.arange(len(old))
        rels = np.unique(sub[:, 1]) if len(sub) else np.zeros(0, dtype=np.int64)
        rel_of = np.full(max(self.n_relations, 1), -1, dtype=np.int64)
        rel_of[rels] = np.arange(len(rels))
        triples = np.stack([new_of[sub[:, 0]], rel_of[sub[:, 1]], new_of[sub[:, 2]]], axis=1) \
            if len(sub) else np.zeros((0, 3), dtype=np.int64)
        return KnowledgeGraph(
            tuple(self.entities[i] for i in old), tuple(self.relations[r] for r in rels),
            triples, {i: tuple(int(new_of[e]) for e in ents) for i, ents in links.items()},
            {int(new_of[e]): s for e, s in self.titles.items() if keep[e]},
        )

    def merge(self, other: KnowledgeGraph) -> KnowledgeGraph:
        """The union of two graphs (entities and relations matched by id; an item's
        links are the union of both sides')."""
        ents = list(self.entities)
        index = dict(self.entity_index())
        for e in other.entities:
            if e not in index:
                index[e] = len(ents)
                ents.append(e)
        rels = list(self.relations)
        rindex = dict(self.relation_index())
        for r in other.relations:
            if r not in rindex:
                rindex[r] = len(rels)
                rels.append(r)
        emap = np.array([index[e] for e in other.entities], dtype=np.int64)
        rmap = np.array([rindex[r] for r in other.relations], dtype=np.int64)
        o = other.triples
        moved = np.stack([emap[o[:, 0]], rmap[o[:, 1]], emap[o[:, 2]]], axis=1) if len(o) \
            else np.zeros((0, 3), dtype=np.int64)
        triples = np.unique(np.concatenate([self.triples, moved]), axis=0)
        links = {i: tuple(e) for i, e in self.item_links.items()}
        for item, es in other.item_links.items():
            moved_links = tuple(int(emap[e]) for e in es)
            links[item] = tuple(dict.fromkeys(links.get(item, ()) + moved_links))
        titles = dict(self.titles) | {int(emap[e]): s for e, s in other.titles.items()}
        return KnowledgeGraph(tuple(ents), tuple(rels), triples, links, titles)

    # -- storage ---------------------------------------------------------------
    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        items = sorted(self.item_links)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        flat: list[int] = []
        for n, item in enumerate(items):
            flat.extend(self.item_links[item])
            offsets[n + 1] = len(flat)
        tkeys = np.array(sorted(self.titles), dtype=np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp, format=np.array(FORMAT), entities=np.array(self.entities, dtype=str),
            relations=np.array(self.relations, dtype=str), triples=self.triples,
            link_items=np.array(items, dtype=str), link_offsets=offsets,
            link_entities=np.array(flat, dtype=np.int64), title_keys=tkeys,
            title_values=np.array([self.titles[int(k)] for k in tkeys], dtype=str),
        )
        tmp.replace(path)  # atomic: a reader never sees half a graph
        return path

    @classmethod
    def load(cls, path: Path) -> KnowledgeGraph:
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                if int(z["format"]) != FORMAT:
                    raise KGError(f"{path}: format {int(z['format'])}, expected {FORMAT}")
                offs = z["link_offsets"]
                flat = z["link_entities"]
                links = {str(i): tuple(int(e) for e in flat[offs[n]: offs[n + 1]])
                         for n, i in enumerate(z["link_items"])}
                titles = {int(k): str(v) for k, v in zip(z["title_keys"], z["title_values"],
                                                         strict=True)}
                return cls(tuple(str(e) for e in z["entities"]),
                           tuple(str(r) for r in z["relations"]), z["triples"], links, titles)
        except (OSError, KeyError, ValueError) as exc:
            raise KGError(f"{path}: not a knowledge-graph file ({exc})") from None


def empty_graph() -> KnowledgeGraph:
    return KnowledgeGraph((), (), np.zeros((0, 3), dtype=np.int64), {}, {})
