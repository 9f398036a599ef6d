"""Integer indices of a scenario for the kgrec models: users, items of every domain
(grouped by domain, so a domain is one contiguous row range and sampling a negative in
it is one draw), training edges, neighbourhoods and the knowledge graph's tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from trainer.data.scenario import Scenario
from trainer.kgrec.gnn import Neighbourhoods

if TYPE_CHECKING:
    from kg.graph import KnowledgeGraph

logger = logging.getLogger(__name__)

MAX_LINKS = 4  # entities per item averaged by eq. 5; ml-100k has one per item


@dataclass
class Indexed:
    users: dict[str, int]
    items: list[str]  # row -> item id, grouped by domain
    domains: list[str]
    item_domain: Tensor  # [n_items]
    domain_start: Tensor  # [n_domains]
    domain_size: Tensor  # [n_domains]
    edges: Tensor  # [E, 3] (user, item, domain) of the training records
    neighbours: Neighbourhoods
    target_rows: Tensor  # rows of scenario.target_items(), in its order
    target_domain: int
    links: Tensor | None  # [n_items, MAX_LINKS] entity rows, padded with n_entities
    triples: Tensor | None  # [T, 3]
    n_entities: int = 0
    n_relations: int = 0

    @property
    def n_users(self) -> int:
        return len(self.users)

    @classmethod
    def build(cls, scenario: Scenario) -> Indexed:
        domains = sorted({it.domain for it in scenario.items.values()})
        d_index = {d: j for j, d in enumerate(domains)}
        items = sorted(scenario.items, key=lambda i: (d_index[scenario.items[i].domain], i))
        row = {iid: j for j, iid in enumerate(items)}
        item_domain = np.array([d_index[scenario.items[i].domain] for i in items], np.int64)
        size = np.bincount(item_domain, minlength=len(domains))
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        everyone = scenario.train + scenario.valid + scenario.test
        users = {u: j for j, u in enumerate(sorted({r.user_id for r in everyone}))}
        e = np.array([(users[r.user_id], row[r.item_id], d_index[scenario.items[r.item_id].domain])
                      for r in scenario.train], np.int64).reshape(-1, 3)
        nbrs = Neighbourhoods.build(e[:, 0], e[:, 2], e[:, 1], len(users), len(domains))
        links, triples, n_ent, n_rel = None, None, 0, 0
        kg: KnowledgeGraph | None = scenario.kg
        if kg is not None:
            n_ent, n_rel = len(kg.entities), len(kg.relations)
            links = torch.full((len(items), MAX_LINKS), n_ent, dtype=torch.long)
            linked = 0
            for iid, r in row.items():
                ents = tuple(kg.item_links.get(iid, ()))[:MAX_LINKS]
                if ents:
                    links[r, : len(ents)] = torch.as_tensor(ents, dtype=torch.long)
                    linked += 1
            # a copy: the graph's array is read-only
            triples = torch.tensor(np.asarray(kg.triples, np.int64).reshape(-1, 3))
            logger.info("kgrec: %d/%d items linked to the KG (%d entities, %d relations, "
                        "%d triples)", linked, len(items), n_ent, n_rel, len(triples))
        target = scenario.target_items()
        return cls(
            users, items, domains, torch.as_tensor(item_domain),
            torch.as_tensor(start), torch.as_tensor(size), torch.as_tensor(e), nbrs,
            torch.as_tensor([row[i] for i in target], dtype=torch.long),
            d_index[scenario.target], links, triples, n_ent, n_rel,
        )
