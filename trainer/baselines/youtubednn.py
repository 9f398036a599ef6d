"""Target-domain-only two-tower (YoutubeDNN-style, Covington et al. 2016): the user
vector is an MLP over the mean embedding of the user's target-domain history; full
softmax over target items. Trained with the same history/positive views as EmbedMe
(trainer/offline.py): positives are never in the input history. A zero-shot user has
an empty history (a learned "empty" vector): this is the no-transfer reference."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from trainer.data.scenario import Scenario


class YoutubeDNN:
    name = "YoutubeDNN (target only)"
    search_space: ClassVar[dict[str, list[Any]]] = {
        "dim": [64, 32, 128], "p_cold": [0.5, 0.25, 0.75]}

    def __init__(self, dim: int = 64, epochs: int = 30, p_cold: float = 0.5,
                 batch: int = 128) -> None:
        self.dim, self.epochs, self.p_cold, self.batch = dim, epochs, p_cold, batch

    def _user_vec(self, hist: list[list[int]]) -> torch.Tensor:
        n = len(self.items)
        flat = [j for h in hist for j in h] or [n]
        offsets = torch.tensor([0] + [len(h) for h in hist[:-1]]).cumsum(0)
        vec = self.bag(torch.tensor(flat), offsets)
        empty = torch.tensor([len(h) == 0 for h in hist]).unsqueeze(1)
        vec = torch.where(empty, self.empty.expand_as(vec), vec)
        return self.mlp(vec)

    def fit(self, scenario: Scenario, seed: int) -> None:
        self.items = scenario.target_items()
        col = {i: j for j, i in enumerate(self.items)}
        self.hist: dict[str, list[int]] = {}
        for r in scenario.train:
            if r.domain == scenario.target:
                self.hist.setdefault(r.user_id, []).append(col[r.item_id])
        torch.manual_seed(seed)
        n = len(self.items)
        self.bag = nn.EmbeddingBag(n + 1, self.dim, mode="mean")
        self.empty = nn.Parameter(torch.zeros(1, self.dim))
        self.mlp = nn.Sequential(nn.Linear(self.dim, self.dim), nn.ReLU(),
                                 nn.Linear(self.dim, self.dim))
        self.out = nn.Embedding(n, self.dim)
        nn.init.normal_(self.out.weight, std=0.05)
        params = [*self.bag.parameters(), self.empty, *self.mlp.parameters(),
                  *self.out.parameters()]
        opt = torch.optim.Adam(params, lr=3e-3)
        users = sorted(self.hist)
        for epoch in range(self.epochs):
            rng = random.Random(f"{seed}-{epoch}")
            rng.shuffle(users)
            for s in range(0, len(users), self.batch):
                hist, pos_rows = [], []
                for u in users[s : s + self.batch]:
                    items = self.hist[u]
                    if len(items) == 1 or rng.random() < self.p_cold:
                        pos, keep = list(items), []
                    else:
                        pos = rng.sample(items, len(items) // 2)
                        keep = [i for i in items if i not in set(pos)]
                    hist.append(keep)
                    pos_rows.append(pos)
                logp = torch.log_softmax(self._user_vec(hist) @ self.out.weight.t(), -1)
                loss = torch.stack([-logp[b, p].mean() for b, p in enumerate(pos_rows)]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

    def score(self, users: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            vec = self._user_vec([self.hist.get(u, []) for u in users])
            return (vec @ self.out.weight.t()).numpy()
