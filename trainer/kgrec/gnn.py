"""Inductive user encoder (paper eq. 7, after HeroGraph's fast additive attention).

A user's neighbourhood is the items they interacted with in training. The state starts
from an embedding of the target domain (no per-user table, so a user unseen in training
is embedded from their items alone) and is refined `layers` times:

    α_i = softmax_i(wᵀ tanh(W [h ; v_i])),    h ← Σ_i α_i v_i

with W and w shared across iterations. A user with no neighbour keeps the domain
embedding — exactly the zero-shot case of the domain-specific GNN.

Neighbourhoods are stored CSR-style (`Neighbourhoods`): the items of every (user,
domain) are contiguous, so "all of u's items" and "u's items in d" are both one slice.
Training samples at most `k` of them per example (GraphSAGE-style; with replacement
when there are more), which bounds the cost of a step whatever the user's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


def additive_attention(query: Tensor, keys: Tensor, mask: Tensor, score: nn.Linear) -> Tensor:
    """Weights [B, K] = softmax over the real keys of wᵀ tanh(W_q q + W_k k_i), i.e.
    wᵀ tanh(W [q ; k_i]) with W = [W_q W_k] split so that W_k k_i is computed once per
    distinct item, not per (user, slot). query: W_q q [B, a]; keys: W_k k_i [B, K, a];
    mask [B, K] (False = padding); `score` is w. A row with no real key is all 0."""
    logits = score(torch.tanh(query.unsqueeze(1) + keys)).squeeze(-1)
    logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return torch.where(mask, weights, torch.zeros_like(weights))  # all-padding rows: NaN -> 0


class AttentionGNN(nn.Module):
    def __init__(self, n_domains: int, dim: int, layers: int = 2, attn_dim: int | None = None,
                 init_std: float = 0.1) -> None:
        super().__init__()
        self.layers = layers
        self.start = nn.Embedding(n_domains, dim)
        nn.init.normal_(self.start.weight, std=init_std)
        self.query = nn.Linear(dim, attn_dim or dim)
        self.key = nn.Linear(dim, attn_dim or dim, bias=False)
        self.score = nn.Linear(attn_dim or dim, 1, bias=False)

    def forward(self, domain: Tensor, nbr: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """domain [B]; nbr [B, K, n] neighbour item vectors; keys [B, K, a] their
        `self.key` projections; mask [B, K] -> user vectors [B, n]."""
        h = self.start(domain)
        has_any = mask.any(1, keepdim=True)
        for _ in range(self.layers):
            alpha = additive_attention(self.query(h), keys, mask, self.score)
            h = torch.where(has_any, torch.bmm(alpha.unsqueeze(1), nbr).squeeze(1), h)
        return h


@dataclass
class Neighbourhoods:
    """flat [E] item rows sorted by (user, domain); start/count [n_users, n_domains]."""

    flat: Tensor
    start: Tensor
    count: Tensor

    @classmethod
    def build(cls, users: np.ndarray, domains: np.ndarray, items: np.ndarray, n_users: int,
              n_domains: int) -> Neighbourhoods:
        order = np.lexsort((items, domains, users))
        key = users[order] * n_domains + domains[order]
        count = np.bincount(key, minlength=n_users * n_domains)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        flat = items[order] if len(order) else np.zeros(1, dtype=np.int64)
        return cls(torch.as_tensor(flat, dtype=torch.long),
                   torch.as_tensor(start, dtype=torch.long).view(n_users, n_domains),
                   torch.as_tensor(count, dtype=torch.long).view(n_users, n_domains))

    def of(self, users: Tensor, domain: Tensor | None) -> tuple[Tensor, Tensor]:
        """(start, count) [B] of each user's items in `domain` (None: all domains)."""
        if domain is None:
            return self.start[users, 0], self.count[users].sum(1)
        return self.start[users, domain], self.count[users, domain]

    def sample(self, start: Tensor, count: Tensor, k: int, generator: torch.Generator | None,
               exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Item rows [B, k] and mask [B, k]: all of a neighbourhood when it has <= k items
        (or when generator is None: then k must cover the largest), else k drawn at random;
        `exclude` [B] (the item being predicted) is masked out."""
        offs = torch.arange(k).expand(len(start), k)
        if generator is not None:
            drawn = (torch.rand(len(start), k, generator=generator) * count.unsqueeze(1)).long()
            offs = torch.where((count > k).unsqueeze(1), drawn, offs)
        mask = offs < count.unsqueeze(1)
        rows = self.flat[(start.unsqueeze(1) + offs).clamp(max=len(self.flat) - 1)]
        if exclude is not None:
            mask &= rows != exclude.unsqueeze(1)
        return rows, mask
