"""TransE knowledge-graph embedding (Bordes et al. 2013; paper eq. 3-4).

d(h, r, t) = ‖e_h + r_r − e_t‖_p (p = 1 or 2); the loss asks a true triple's distance
to be at least γ_KG below the distance of a corrupted one (head or tail replaced by a
uniformly drawn entity, each with probability 1/2). Entity vectors are kept inside the
unit ball after every step (`renorm_`), as in the reference formulation: without it the
loss is minimised by inflating the norms instead of learning the relations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def transe_distance(head: Tensor, rel: Tensor, tail: Tensor, p: int = 1) -> Tensor:
    """[..., n] vectors -> [...] distances ‖h + r − t‖_p."""
    return torch.linalg.vector_norm(head + rel - tail, ord=p, dim=-1)


def kg_margin_loss(pos_dist: Tensor, neg_dist: Tensor, margin: float) -> Tensor:
    """Mean of max(0, γ + d(true) − d(corrupted)) (eq. 4)."""
    return torch.relu(margin + pos_dist - neg_dist).mean()


def corrupt(triples: Tensor, n_entities: int, generator: torch.Generator) -> Tensor:
    """[T, 3] (head, relation, tail) -> copies with head or tail replaced at random."""
    out = triples.clone()
    replace_head = torch.rand(len(triples), generator=generator) < 0.5
    random_entity = torch.randint(n_entities, (len(triples),), generator=generator)
    out[:, 0] = torch.where(replace_head, random_entity, out[:, 0])
    out[:, 2] = torch.where(replace_head, out[:, 2], random_entity)
    return out


class TransE(nn.Module):
    """Entity and relation tables; row `n_entities` of the entity table is the learned
    vector of "no linked entity" (never in a triple)."""

    def __init__(self, n_entities: int, n_relations: int, dim: int, p: int = 1) -> None:
        super().__init__()
        if p not in (1, 2):
            raise ValueError(f"TransE norm must be 1 or 2, not {p}")
        self.n_entities, self.p = n_entities, p
        self.entities = nn.Embedding(n_entities + 1, dim)
        self.relations = nn.Embedding(max(n_relations, 1), dim)
        bound = 6.0 / dim**0.5  # Bordes et al.'s uniform initialisation
        nn.init.uniform_(self.entities.weight, -bound, bound)
        nn.init.uniform_(self.relations.weight, -bound, bound)
        with torch.no_grad():
            self.relations.weight.copy_(nn.functional.normalize(self.relations.weight, dim=-1))
            self.renorm()

    def distance(self, triples: Tensor) -> Tensor:
        e = self.entities
        return transe_distance(e(triples[:, 0]), self.relations(triples[:, 1]),
                               e(triples[:, 2]), self.p)

    def loss(self, triples: Tensor, margin: float, generator: torch.Generator) -> Tensor:
        both = torch.cat([triples, corrupt(triples, self.n_entities, generator)])
        # one gather for every head and tail: each lookup's backward writes a dense
        # gradient of the whole entity table, the cost of a step on a large graph
        ends = self.entities(torch.cat([both[:, 0], both[:, 2]]))
        n = len(both)
        dist = transe_distance(ends[:n], self.relations(both[:, 1]), ends[n:], self.p)
        return kg_margin_loss(dist[: len(triples)], dist[len(triples):], margin)

    @torch.no_grad()
    def renorm(self) -> None:
        self.entities.weight.renorm_(2, 0, 1.0)
