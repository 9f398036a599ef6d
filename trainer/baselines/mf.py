"""Cross-domain ID baselines.

- CMF (Singh & Gordon 2008): one user table shared by both domains, one item table per
  domain, factorised jointly (full softmax per domain). A zero-shot user's vector is
  learned from the source domain only and scored against target items.
- EMCDR (Man et al. 2017): MF per domain, then an MLP mapping source user vectors to
  target user vectors, fitted on the overlapping training users (MSE). Users with target
  training data keep their target vector; zero-shot users get the mapped source vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from trainer.baselines.common import softmax_mf
from trainer.data.scenario import Scenario


class _Indexed:
    def _index(self, scenario: Scenario) -> None:
        self.target_items = scenario.target_items()
        self.source_items = sorted(
            i for i, it in scenario.items.items() if it.domain == scenario.source
        )
        self.t_col = {i: j for j, i in enumerate(self.target_items)}
        self.s_col = {i: j for j, i in enumerate(self.source_items)}
        users = sorted({r.user_id for r in scenario.train + scenario.valid + scenario.test})
        self.u_row = {u: j for j, u in enumerate(users)}

    def _pairs(self, scenario: Scenario, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        col = self.t_col if domain == scenario.target else self.s_col
        rows = [(self.u_row[r.user_id], col[r.item_id]) for r in scenario.train
                if r.domain == domain]
        t = torch.tensor(rows, dtype=torch.long).view(-1, 2)
        return t[:, 0], t[:, 1]


class CMF(_Indexed):
    name = "CMF"

    def __init__(self, dim: int = 64, epochs: int = 30) -> None:
        self.dim, self.epochs = dim, epochs

    def fit(self, scenario: Scenario, seed: int) -> None:
        self._index(scenario)
        su, si = self._pairs(scenario, scenario.source)
        tu, ti = self._pairs(scenario, scenario.target)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        U = nn.Embedding(len(self.u_row), self.dim)
        Vs = nn.Embedding(len(self.source_items), self.dim)
        Vt = nn.Embedding(len(self.target_items), self.dim)
        for emb in (U, Vs, Vt):
            nn.init.normal_(emb.weight, std=0.05)
        opt = torch.optim.Adam([U.weight, Vs.weight, Vt.weight], lr=1e-2)
        batch = 1024
        n_batches = max(1, max(len(su), len(tu)) // batch)
        for _ in range(self.epochs):
            ps = torch.randperm(len(su), generator=gen)
            pt = torch.randperm(len(tu), generator=gen)
            for b in range(n_batches):
                loss = torch.zeros(())
                for perm, uu, ii, V in ((ps, su, si, Vs), (pt, tu, ti, Vt)):
                    if len(perm) == 0:
                        continue
                    idx = perm[(b * batch) % len(perm):][:batch]
                    loss = loss + nn.functional.cross_entropy(U(uu[idx]) @ V.weight.t(), ii[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.U = U.weight.detach()
        self.V = Vt.weight.detach()

    def score(self, users: Sequence[str]) -> np.ndarray:
        rows = torch.tensor([self.u_row[u] for u in users])
        return (self.U[rows] @ self.V.t()).numpy()


class EMCDR(_Indexed):
    name = "EMCDR"

    def __init__(self, dim: int = 64, epochs: int = 30, map_epochs: int = 200) -> None:
        self.dim, self.epochs, self.map_epochs = dim, epochs, map_epochs

    def fit(self, scenario: Scenario, seed: int) -> None:
        self._index(scenario)
        su, si = self._pairs(scenario, scenario.source)
        tu, ti = self._pairs(scenario, scenario.target)
        n = len(self.u_row)
        Us, _ = softmax_mf(su, si, n, len(self.source_items), dim=self.dim,
                           epochs=self.epochs, seed=seed)
        Ut, Vt = softmax_mf(tu, ti, n, len(self.target_items), dim=self.dim,
                            epochs=self.epochs, seed=seed + 1)
        has_s = torch.zeros(n, dtype=torch.bool)
        has_s[su] = True
        has_t = torch.zeros(n, dtype=torch.bool)
        has_t[tu] = True
        both = torch.nonzero(has_s & has_t).squeeze(1)
        torch.manual_seed(seed)
        mapping = nn.Sequential(nn.Linear(self.dim, 2 * self.dim), nn.Tanh(),
                                nn.Linear(2 * self.dim, self.dim))
        opt = torch.optim.Adam(mapping.parameters(), lr=1e-3, weight_decay=1e-5)
        xs, ys = Us.weight.detach()[both], Ut.weight.detach()[both]
        for _ in range(self.map_epochs):
            loss = nn.functional.mse_loss(mapping(xs), ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mapped = mapping(Us.weight)
        user = torch.where(has_t.unsqueeze(1), Ut.weight.detach(), mapped)
        self.U = torch.where((has_s | has_t).unsqueeze(1), user, torch.zeros_like(user))
        self.V = Vt.weight.detach()

    def score(self, users: Sequence[str]) -> np.ndarray:
        rows = torch.tensor([self.u_row[u] for u in users])
        return (self.U[rows] @ self.V.t()).numpy()
