"""The paper's model family as one composable module, and its recommendation loss.

- Base (eq. 1): u = U[u], v = V[v], score u · v.
- KGE (eq. 3-5): v replaced by v' = MLP([v ; e_v]) (interaction.py); TransE trained
  multi-task on the knowledge graph (transe.py).
- MultD (eq. 6): u_d = MLP_d([U_shared[u] ; U_d[u]]) (multidomain.py).
- GNN (eq. 7): the two tables of eq. 6 replaced by a shared and a domain-specific
  attention GNN over the user's items (gnn.py); needs MultD, as in the paper.

Every variant is trained with the margin ranking loss over negatives sampled in the
positive's domain (eq. 2) — SMF with BPR over the whole catalogue (bpr.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.kgrec.gnn import AttentionGNN, Neighbourhoods
from trainer.kgrec.interaction import KGItemEncoder
from trainer.kgrec.multidomain import DomainMLP, TableUsers
from trainer.kgrec.transe import TransE


@dataclass(frozen=True)
class KGRecConfig:
    kge: bool = False
    multidomain: bool = False
    gnn: bool = False
    dim: int = 64
    layers: int = 2  # GNN iterations
    neighbours: int = 16  # items sampled per neighbourhood in training (all when scoring)
    cold_rate: float = 0.0  # GNN: share of examples whose domain neighbourhood is hidden
    # small initial vectors: ml-100k Base seed 0, zero-shot HR@10 0.341 at 0.1, 0.384 at 0.01
    init_std: float = 0.01
    loss: str = "margin"  # margin (eq. 2) | bpr (SMF)
    domain_negatives: bool = True  # negatives from the positive's domain (False: SMF)
    negatives: int = 4
    margin: float = 1.0
    transe_p: int = 1
    kg_weight: float = 1.0
    kg_margin: float = 1.0
    kg_batch: int = 1024
    epochs: int = 10
    batch: int = 1024
    lr: float = 5e-3
    weight_decay: float = 0.0
    # intra-op threads while fitting: a step's ops are too small to gain from more, and
    # on a shared CPU extra threads spin against other processes (ml-100k Base: 45 k
    # examples/s with 1 thread, 2 k with 2 on the loaded 2-core dev machine)
    threads: int = 1

    def __post_init__(self) -> None:
        if self.gnn and not self.multidomain:
            raise ValueError("the GNN user encoder replaces the tables of MultD: set multidomain")
        if self.loss not in ("margin", "bpr"):
            raise ValueError(f"loss must be margin or bpr, not {self.loss!r}")


def margin_ranking_loss(pos_scores: Tensor, neg_scores: Tensor, margin: float) -> Tensor:
    """Mean of max(0, γ − f(u, v⁺) + f(u, v⁻)) over every (positive, negative) pair (eq. 2);
    pos [B], neg [B, M]."""
    return torch.relu(margin - pos_scores.unsqueeze(-1) + neg_scores).mean()


class KGRec(nn.Module):
    def __init__(self, cfg: KGRecConfig, n_users: int, n_items: int, n_domains: int, *,
                 neighbours: Neighbourhoods | None = None, links: Tensor | None = None,
                 n_entities: int = 0, n_relations: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.dim
        self.items = nn.Embedding(n_items, n)
        nn.init.normal_(self.items.weight, std=cfg.init_std)
        self.enhance: KGItemEncoder | None = None
        if cfg.kge:
            if links is None:
                raise ValueError("KGE needs a knowledge graph (the scenario has none)")
            self.transe = TransE(n_entities, n_relations, n, cfg.transe_p)
            self.enhance = KGItemEncoder(n, links, self.transe)
        if cfg.gnn:
            if neighbours is None:
                raise ValueError("the GNN needs the training neighbourhoods")
            self.nb = neighbours
            self.gnn_shared = AttentionGNN(n_domains, n, cfg.layers, init_std=cfg.init_std)
            self.gnn_domain = AttentionGNN(n_domains, n, cfg.layers, init_std=cfg.init_std)
        elif cfg.multidomain:
            self.tables = TableUsers(n_users, n_domains, n, cfg.init_std)
        else:
            self.users = nn.Embedding(n_users, n)
            nn.init.normal_(self.users.weight, std=cfg.init_std)
        if cfg.multidomain:
            self.domain_mlp = DomainMLP(n_domains, 2 * n, n)

    def item_vectors(self, rows: Tensor) -> Tensor:
        v = self.items(rows)
        return v if self.enhance is None else self.enhance(v, rows)

    def encode(self, users: Tensor, domain: Tensor, candidates: Tensor,
               generator: torch.Generator | None = None,
               exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """User vectors [B, n] for their `domain` [B] and the vectors of `candidates`
        (item rows of any shape). Training passes a generator (neighbours are sampled,
        `exclude` [B] — the positive — is hidden from them); scoring passes none."""
        needed = [candidates.reshape(-1)]
        if self.cfg.gnn:
            hoods = self._neighbourhoods(users, domain, generator, exclude)
            needed += [rows.reshape(-1) for rows, _ in hoods]
        # each distinct item is encoded once per batch (eq. 5's MLP is the costly part)
        uniq, inverse = torch.unique(torch.cat(needed), return_inverse=True)
        unique_vecs = self.item_vectors(uniq)
        cand = unique_vecs[inverse[: candidates.numel()]].view(*candidates.shape, -1)
        if self.cfg.gnn:
            parts, offset = [], candidates.numel()
            for (rows, mask), gnn in zip(hoods, (self.gnn_shared, self.gnn_domain), strict=True):
                at = inverse[offset : offset + rows.numel()]
                offset += rows.numel()
                nbr = unique_vecs[at].view(*rows.shape, -1)
                keys = gnn.key(unique_vecs)[at].view(*rows.shape, -1)
                parts.append(gnn(domain, nbr, keys, mask))
            user = self.domain_mlp(torch.cat(parts, dim=-1), domain)
        elif self.cfg.multidomain:
            shared, specific = self.tables(users, domain)
            user = self.domain_mlp(torch.cat([shared, specific], dim=-1), domain)
        else:
            user = self.users(users)
        return user, cand

    def _neighbourhoods(self, users: Tensor, domain: Tensor, generator: torch.Generator | None,
                        exclude: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        out = []
        for dom in (None, domain):  # shared GNN: every domain; domain GNN: `domain` only
            start, count = self.nb.of(users, dom)
            k = self.cfg.neighbours if generator is not None else max(int(count.max()), 1)
            out.append(self.nb.sample(start, count, k, generator, exclude))
        if generator is not None and self.cfg.cold_rate > 0:
            rows, mask = out[1]
            cold = torch.rand(len(users), generator=generator) < self.cfg.cold_rate
            out[1] = (rows, mask & ~cold.unsqueeze(1))
        return out
