"""KG enhancement of the item encoder (paper eq. 5): v' = MLP([v ; e_v]), the item's ID
embedding and its linked entities' TransE embedding (mean over the links; the learned
"no entity" row for an unlinked item), used in place of v everywhere."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.kgrec.transe import TransE


class KGItemEncoder(nn.Module):
    def __init__(self, dim: int, links: Tensor, transe: TransE) -> None:
        """links [n_items, L]: entity rows per item, padded with `transe.n_entities`."""
        super().__init__()
        self.transe = transe
        self.links: Tensor
        self.register_buffer("links", links, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def entity_vectors(self, rows: Tensor) -> Tensor:
        links = self.links[rows]  # [R, L]
        pad = self.transe.n_entities
        real = links != pad
        vecs = self.transe.entities(links)
        # unlinked items: all-padding rows average the learned "no entity" vector
        weight = torch.where(real.any(1, keepdim=True), real, torch.ones_like(real))
        weight = weight.to(vecs.dtype).unsqueeze(-1)
        return (vecs * weight).sum(1) / weight.sum(1)

    def forward(self, id_vectors: Tensor, rows: Tensor) -> Tensor:
        return self.mlp(torch.cat([id_vectors, self.entity_vectors(rows)], dim=-1))
