"""Multi-domain user representation (paper eq. 6, "Deep Sharing User Representations"):
u_d = MLP_d([shared(u) ; specific_d(u)]) — a two-layer MLP whose weights belong to the
target domain d maps the concatenation back to n dimensions.

With tables, shared = U_shared[u] and specific_d = U_d[u]; a user new to d keeps the
random initial row of U_d (never updated: no record of theirs is in d) while the shared
row was trained on their other domains. With the GNN (gnn.py) both parts are encoders.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DomainMLP(nn.Module):
    """One two-layer MLP per domain, applied to a batch of mixed domains in one pass:
    every domain's MLP runs on every row and the row's own domain is picked — cheaper
    than grouping for the handful of domains a scenario has."""

    def __init__(self, n_domains: int, d_in: int, d_out: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or d_out
        self.w1 = nn.Parameter(torch.empty(n_domains, d_in, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_domains, hidden))
        self.w2 = nn.Parameter(torch.empty(n_domains, hidden, d_out))
        self.b2 = nn.Parameter(torch.zeros(n_domains, d_out))
        for w in (self.w1, self.w2):  # nn.Linear's default, per domain
            for d in range(n_domains):
                nn.init.kaiming_uniform_(w.data[d].t(), a=5**0.5)

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        """x [B, d_in], domain [B] -> [B, d_out]."""
        h = torch.relu(torch.einsum("bi,dih->bdh", x, self.w1) + self.b1)
        out = torch.einsum("bdh,dho->bdo", h, self.w2) + self.b2
        return out[torch.arange(len(x)), domain]


class TableUsers(nn.Module):
    """U_shared [n_users, n] and one U_d [n_users, n] per domain (one table, row
    d·n_users + u)."""

    def __init__(self, n_users: int, n_domains: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.n_users = n_users
        self.shared = nn.Embedding(n_users, dim)
        self.specific = nn.Embedding(n_domains * n_users, dim)
        for emb in (self.shared, self.specific):
            nn.init.normal_(emb.weight, std=init_std)

    def forward(self, users: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
        return self.shared(users), self.specific(domain * self.n_users + users)
