"""The streaming accumulator every knowledge-graph builder feeds.

Rows are interned as they arrive (entity and relation ids -> ints) and the triples
kept in a compact `array('q')`, so memory grows with the graph (3 × 8 bytes a
triple plus the id strings), never with the input file: a builder reads any dump
line by line. Bad rows are counted by reason, the first few kept as examples, and
the report is logged when the build finishes — never skipped silently.
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from kg.graph import KnowledgeGraph

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 5


@dataclass
class BuildReport:
    """What a build read, kept and skipped (by reason, with a few `file:line` examples)."""

    source: str
    rows: int = 0
    triples: int = 0
    links: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "rows": self.rows, "triples": self.triples,
                "links": self.links, "duplicates": self.duplicates,
                "skipped": dict(self.skipped), "examples": list(self.examples)}

    def log(self) -> None:
        if self.skipped:
            logger.warning("%s: skipped %d bad rows %s, e.g. %s", self.source,
                           self.skipped_total, dict(self.skipped), "; ".join(self.examples))
        logger.info("%s: %d rows -> %d triples, %d item links (%d duplicates dropped)",
                    self.source, self.rows, self.triples, self.links, self.duplicates)


class GraphBuilder:
    """Interns ids and collects triples, item links and titles; `finish()` dedupes."""

    def __init__(self, source: str) -> None:
        self.report = BuildReport(source)
        self._entities: dict[str, int] = {}
        self._relations: dict[str, int] = {}
        self._triples = array("q")
        self._links: dict[str, list[int]] = {}
        self._titles: dict[int, str] = {}

    def entity(self, entity_id: str, title: str | None = None) -> int:
        idx = self._entities.get(entity_id)
        if idx is None:
            idx = self._entities[entity_id] = len(self._entities)
        if title and idx not in self._titles:
            self._titles[idx] = title
        return idx

    def relation(self, relation_id: str) -> int:
        idx = self._relations.get(relation_id)
        if idx is None:
            idx = self._relations[relation_id] = len(self._relations)
        return idx

    def add_triple(self, head: str, relation: str, tail: str) -> None:
        self._triples.extend((self.entity(head), self.relation(relation), self.entity(tail)))

    def add_link(self, item_id: str, entity_id: str, title: str | None = None) -> None:
        ents = self._links.setdefault(item_id, [])
        idx = self.entity(entity_id, title)
        if idx in ents:
            self.report.duplicates += 1
        else:
            ents.append(idx)

    def finish(self) -> KnowledgeGraph:
        raw = np.frombuffer(self._triples, dtype=np.int64).reshape(-1, 3) if self._triples \
            else np.zeros((0, 3), dtype=np.int64)
        triples = np.unique(raw, axis=0) if len(raw) else raw
        self.report.duplicates += len(raw) - len(triples)
        self.report.triples = len(triples)
        self.report.links = sum(len(v) for v in self._links.values())
        self.report.log()
        return KnowledgeGraph(
            tuple(self._entities), tuple(self._relations), triples,
            {i: tuple(v) for i, v in self._links.items()}, dict(self._titles),
        )
