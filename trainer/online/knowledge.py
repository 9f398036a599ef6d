"""The continuous EntityGraph trainer's knowledge graph (MEKB_TRAINER_KG_DIM > 0).

The graph is built once, when the trainer's first examples arrive (by then the item
agent has linked the items they name, even in a system started empty): the configured
store (MEKB_TRAINER_KG_PATH, a `.npz` of `mekb kg build`) merged (`KnowledgeGraph.merge`:
nodes and relations matched by id) with the live system's own edges, the item agent's
compacted `item-entities` topic read from its beginning to its end offsets
(kg/live.py: item → linked kb/brand/category entity, item → domain). It is not rebuilt
while the trainer runs: an entity that first appears later is tied only if it was a
node then; otherwise it has no KG row (`entity_kg_row` -1: no tie, its vector is the
entity table's alone) until a restart rebuilds the graph and links it.

Rows of the model's TransE tables are identified by node and relation id
(`EntityGraph.kg_entity_ids`), so a restart on a rebuilt graph keeps every trained row
where it was and appends the graph's new nodes and relations (`align`).

Per step the trainer reads a fixed number of triples (`TripleSampler`): half touching
the step's linked entities (one incident triple of a uniformly drawn such node each),
half uniformly from the whole graph — a step's KG cost does not grow with the graph.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kg.graph import KGError, KnowledgeGraph
from kg.live import build_live_kg, item_entity
from mekb.settings import Settings

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 120.0  # reading item-entities at start-up; what was read by then is used


def read_item_entities(settings: Settings, timeout_s: float = READ_TIMEOUT_S) -> list[bytes]:
    """The live values of the compacted item-entities topic (the latest per key,
    tombstones and the stream workers' replica markers dropped), read up to the end
    offsets it had when the read began. A missing topic gives none."""
    from kafka import KafkaConsumer, TopicPartition

    from mekb.kafka_config import kafka_python_config
    from streams.kafka_io import MARKER

    topic = settings.topic("item-entities")
    consumer = KafkaConsumer(**kafka_python_config(settings), group_id=None,
                             enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
    latest: dict[Any, bytes | None] = {}
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                           or ())]
        if not tps:
            logger.warning("knowledge graph: topic %s not found, no item edges", topic)
            return []
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        n = 0
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                logger.warning("knowledge graph: %s not read to its end in %.0f s: using "
                               "the %d records read", topic, timeout_s, n)
                break
            for recs in consumer.poll(timeout_ms=500, max_records=50_000).values():
                for rec in recs:
                    n += 1
                    if rec.key == MARKER:
                        continue
                    latest[rec.key if rec.key is not None else ("offset", rec.offset)] = \
                        rec.value
    finally:
        consumer.close()
    return [v for v in latest.values() if v is not None]


def load_store(settings: Settings) -> KnowledgeGraph | None:
    """MEKB_TRAINER_KG_PATH's graph (None when unset). One that cannot be read stops the
    trainer (KGError naming the setting and file): training on without the graph asked
    for would publish a different model silently."""
    path = settings.trainer_kg_path
    if path is None:
        return None
    if not path.is_file():
        raise KGError(f"MEKB_TRAINER_KG_PATH: {path}: no such knowledge-graph file")
    try:
        return KnowledgeGraph.load(path)
    except KGError as exc:
        raise KGError(f"MEKB_TRAINER_KG_PATH: {exc}") from None


def build_graph(store: KnowledgeGraph | None, item_records: Iterable[bytes]) -> KnowledgeGraph:
    """The store (if any) merged with the item agent's edges."""
    live, report = build_live_kg(item_records)
    if report.skipped:
        logger.warning("knowledge graph: item-entities records skipped: %s", report.as_dict())
    graph = live if store is None else store.merge(live)
    logger.info("knowledge graph: %s (store: %s, %d items' edges)", graph.summary(),
                store.summary() if store is not None else "none", len(live.item_links))
    return graph


def node_rows(graph: KnowledgeGraph) -> dict[str, int]:
    """Entity id → node: every node by its id; an item's product entity
    (`product:<item>`) that is not a node itself → the first node the item links to
    (a store's own item links, e.g. ml-100k's Freebase ids)."""
    rows = dict(graph.entity_index())
    for item, nodes in graph.item_links.items():
        if nodes:
            rows.setdefault(item_entity(item), nodes[0])
    return rows


@dataclass(frozen=True)
class Alignment:
    """`graph` in the index space of a model's TransE rows."""

    new_entities: list[str]  # node ids to append to the model's rows, in order
    new_relations: list[str]
    triples: np.ndarray  # int64 [T, 3] in the model's rows (after appending)
    entity_rows: dict[str, int]  # MeKB entity id → model KG row


def align(graph: KnowledgeGraph, entity_ids: Sequence[str],
          relation_ids: Sequence[str]) -> Alignment:
    """Map `graph` onto rows named `entity_ids`/`relation_ids` (a model's: empty names
    are rows of unknown identity, left as they are); nodes and relations the rows lack
    are appended after them."""
    index = {e: i for i, e in enumerate(entity_ids) if e}
    new_entities = [e for e in graph.entities if e not in index]
    index.update({e: len(entity_ids) + k for k, e in enumerate(new_entities)})
    rindex = {r: i for i, r in enumerate(relation_ids) if r}
    new_relations = [r for r in graph.relations if r not in rindex]
    rindex.update({r: len(relation_ids) + k for k, r in enumerate(new_relations)})
    emap = np.array([index[e] for e in graph.entities], dtype=np.int64)
    rmap = np.array([rindex[r] for r in graph.relations], dtype=np.int64)
    t = graph.triples
    triples = np.stack([emap[t[:, 0]], rmap[t[:, 1]], emap[t[:, 2]]], axis=1) if len(t) \
        else np.zeros((0, 3), dtype=np.int64)
    rows = {e: int(emap[n]) for e, n in node_rows(graph).items()}
    return Alignment(new_entities, new_relations, triples, rows)


class TripleSampler:
    """Fixed-size triple samples: half incident to given nodes, half uniform."""

    def __init__(self, triples: np.ndarray, n_nodes: int) -> None:
        self.triples = torch.from_numpy(np.ascontiguousarray(triples, dtype=np.int64))
        t = self.triples.numpy()
        # incidence lists (CSR): the triples where a node is head or tail
        ends = np.concatenate([t[:, 0], t[:, 2]])
        order = np.argsort(ends, kind="stable")
        self.incident = torch.from_numpy(np.concatenate([np.arange(len(t))] * 2)[order])
        self.start = torch.from_numpy(np.searchsorted(ends[order], np.arange(n_nodes + 1)))
        self.n_nodes = n_nodes

    def __len__(self) -> int:
        return len(self.triples)

    def sample(self, nodes: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """[n, 3] triples (none from an empty graph): n // 2 incident to a node drawn
        uniformly from `nodes` (those with a triple), the rest uniform."""
        total = len(self.triples)
        if not total:
            return self.triples
        nodes = nodes[(nodes >= 0) & (nodes < self.n_nodes)]
        degree = self.start[nodes + 1] - self.start[nodes]
        nodes, degree = nodes[degree > 0], degree[degree > 0]
        local = n // 2 if len(nodes) else 0
        picks = []
        if local:
            which = torch.randint(len(nodes), (local,), generator=generator)
            offset = (torch.rand(local, generator=generator) * degree[which]).long()
            offset = torch.minimum(offset, degree[which] - 1)
            picks.append(self.incident[self.start[nodes[which]] + offset])
        picks.append(torch.randint(total, (n - local,), generator=generator))
        return self.triples[torch.cat(picks)]

