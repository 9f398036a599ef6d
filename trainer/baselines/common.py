"""Shared pieces of the ID baselines: index maps and a full-softmax MF trainer."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def softmax_mf(
    users: Tensor,
    items: Tensor,
    n_users: int,
    n_items: int,
    *,
    dim: int,
    epochs: int,
    seed: int,
    lr: float = 1e-2,
    l2: float = 1e-6,
    batch: int = 1024,
    user_table: nn.Embedding | None = None,
) -> tuple[nn.Embedding, nn.Embedding]:
    """Matrix factorisation trained with full softmax over the `n_items` (one domain):
    the same objective as EmbedMe, so the comparison is about the user representation."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    U = user_table or nn.Embedding(n_users, dim)
    V = nn.Embedding(n_items, dim)
    for emb in (U, V):
        if emb is not user_table:
            nn.init.normal_(emb.weight, std=0.05)
    params = list(V.parameters()) + ([] if user_table is not None else list(U.parameters()))
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(users), generator=gen)
        for s in range(0, len(perm), batch):
            idx = perm[s : s + batch]
            u, i = U(users[idx]), items[idx]
            logits = u @ V.weight.t()
            loss = nn.functional.cross_entropy(logits, i)
            loss = loss + l2 * (u.pow(2).sum() + V.weight.pow(2).sum()) / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return U, V
