"""EntityGraph+MF: a cold-start hybrid of EntityGraph and EMCDR (harness method
`entitygraph-mf`; offline only, not a model kind of the live system).

Why: on ml-100k's validation users (docs/results.md, "Where EMCDR's zero-shot edge comes
from"), EMCDR's own pipeline scores zero-shot users better when its mapping reads
EntityGraph's user vector instead of the source-domain MF vector — so EntityGraph's
user representation is not what trails EMCDR; its item side, scored directly, is.

- Users with target-domain training records: EntityGraph as it is (its tower over the
  whole MeKB, its item table).
- Zero-shot users: EMCDR's target side. A softmax MF of the target domain gives user and
  item vectors (Ut, Vt); EMCDR's mapping MLP is fitted on the overlapping training users
  from EntityGraph's vector of their *source-only* MeKB (their target items hidden, the
  zero-shot condition) to their Ut; a zero-shot user is mapping(EntityGraph(MeKB))
  scored against Vt. Still inductive for them: nothing is fitted per zero-shot user.

Every ranking is one user's, so the two item spaces never meet in one list. Serving it
would need both item tables and the routing; that is not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainer.baselines.common import softmax_mf
from trainer.baselines.mf import IdIndex, fit_mapping
from trainer.data.scenario import Scenario
from trainer.entitygraph.data import pad
from trainer.entitygraph.scorer import EntityGraphScorer

EMBED_CHUNK = 256  # users per tower call: a [chunk, L, H] gather stays small


class EntityGraphMF(EntityGraphScorer):
    def __init__(self, *, mf_epochs: int = 30, map_epochs: int = 200, **params: Any) -> None:
        """`mf_epochs`, `map_epochs`: EMCDR's defaults (the target MF's width is
        EntityGraph's K); `params`: EntityGraph's, and its search space."""
        super().__init__(name="EntityGraph+MF (hybrid)", **params)
        self.mf_epochs, self.map_epochs = mf_epochs, map_epochs

    def fit(self, scenario: Scenario, seed: int) -> None:
        super().fit(scenario, seed)
        ids = IdIndex()
        ids._index(scenario)
        su, _ = ids._pairs(scenario, scenario.sources)
        tu, ti = ids._pairs(scenario, scenario.target)
        n = len(ids.u_row)
        Ut, Vt = softmax_mf(tu, ti, n, len(ids.target_items), dim=self.model_config.dim,
                            epochs=self.mf_epochs, seed=seed + 1)
        has_s = torch.zeros(n, dtype=torch.bool)
        has_s[su] = True
        has_t = torch.zeros(n, dtype=torch.bool)
        has_t[tu] = True
        users = sorted(ids.u_row, key=ids.u_row.__getitem__)
        x = self.source_only_vectors(users, set(ids.target_items))
        both = torch.nonzero(has_s & has_t).squeeze(1)
        self.mapping = fit_mapping(x[both], Ut.weight.detach()[both], seed=seed,
                                   epochs=self.map_epochs)
        with torch.no_grad():
            self.cold_user = self.mapping(x)
        self.u_row, self.warm = ids.u_row, has_t
        self.cold_item = Vt.weight.detach()

    def source_only_vectors(self, users: Sequence[str], target: set[str]) -> torch.Tensor:
        """EntityGraph's vector of each user's MeKB without their target-domain items."""
        index = self.index.users
        mekbs = [self.index.mekb_excluding(u, {i for i in index[u].items if i in target})
                 if u in index else self.index.mekb(u) for u in users]
        with torch.no_grad():
            return torch.cat([self.model.encode_rows(*pad(mekbs[i:i + EMBED_CHUNK]))
                              for i in range(0, len(mekbs), EMBED_CHUNK)])

    def score(self, users: Sequence[str]) -> np.ndarray:
        scores = super().score(users)
        rows = torch.tensor([self.u_row[u] for u in users], dtype=torch.long)
        cold = ~self.warm[rows]
        if bool(cold.any()):
            scores[cold.numpy()] = (self.cold_user[rows[cold]] @ self.cold_item.t()).numpy()
        return scores
