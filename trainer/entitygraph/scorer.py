"""EntityGraph as a harness method (trainer/evaluate.py `Scorer`).

Test/valid users are embedded from their training MeKB (all domains) — for a
zero-shot user that is the source history alone; nothing is fitted per user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from trainer.data.scenario import Scenario
from trainer.entitygraph.data import MeKBIndex, pad
from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
from trainer.entitygraph.train import EntityGraphTrainConfig, build_model, make_index, train
from trainer.entitygraph.vectors import EntityVectorCache, TitleEncoder


class EntityGraphScorer:
    # tuned on the validation split by the harness (same budget as every method)
    # (first values = the defaults, chosen on ml-100k validation users)
    search_space: ClassVar[dict[str, list[Any]]] = {
        "lr": [1e-3, 3e-3],
        "entity_lr": [1e-2, 3e-3],
        "dropout": [0.5, 0.3],
        "epochs": [20, 30],
    }
    _caches: ClassVar[dict[tuple[str | None, str | None], EntityVectorCache]] = {}

    def __init__(self, *, name: str = "EntityGraph", model: EntityGraphConfig | None = None,
                 training: EntityGraphTrainConfig | None = None,
                 cache_dir: Path | None = None, save_dir: Path | None = None,
                 **params: Any) -> None:
        """`params`: search-space names, each a field of the model or training config."""
        self.name = name
        model_cfg = model or EntityGraphConfig()
        train_cfg = training or EntityGraphTrainConfig(progress=False)
        m_fields = set(EntityGraphConfig.__dataclass_fields__)
        t_fields = set(EntityGraphTrainConfig.__dataclass_fields__)
        unknown = set(params) - m_fields - t_fields
        if unknown:
            raise TypeError(f"unknown EntityGraph parameters {sorted(unknown)}")
        self.model_config = replace(model_cfg, **{k: v for k, v in params.items()
                                                  if k in m_fields})
        self.train_config = replace(train_cfg, **{k: v for k, v in params.items()
                                                  if k in t_fields and k not in m_fields})
        self.cache_dir, self.save_dir = cache_dir, save_dir

    def _cache(self) -> EntityVectorCache:
        # one encoder load per process and cache directory: every seed and configuration
        # of a harness run reuses the title vectors
        key = (self.model_config.encoder, str(self.cache_dir) if self.cache_dir else None)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = EntityVectorCache(
                self.cache_dir, TitleEncoder(self.model_config.encoder))
        return cache

    def fit(self, scenario: Scenario, seed: int) -> None:
        cache = self._cache() if self.model_config.pretrained else None
        self.model = build_model(self.model_config, scenario, cache=cache, seed=seed)
        train(self.model, scenario, replace(self.train_config, seed=seed))
        if self.save_dir is not None:
            self.model.save(self.save_dir / f"{self.name}-seed{seed}")
        self.attach(self.model, scenario)

    def attach(self, model: EntityGraph, scenario: Scenario) -> None:
        self.model = model.eval()
        self.index: MeKBIndex = make_index(model, scenario)
        self.rows = model.item_rows(scenario.target_items())

    def embed(self, users: Sequence[str]) -> torch.Tensor:
        rows, scores, mask = pad([self.index.mekb(u) for u in users])
        with torch.no_grad():
            return self.model.encode_rows(rows, scores, mask)

    def score(self, users: Sequence[str]) -> np.ndarray:
        emb = self.embed(users)
        with torch.no_grad():
            return (emb @ self.model.item_table[self.rows].t()).numpy()


class EntityGraphTargetOnly(EntityGraphScorer):
    """The ablation: trained on the target domain's records only (no multi-domain
    training), to measure what the source-domain signal adds."""

    def __init__(self, **params: Any) -> None:
        super().__init__(name="EntityGraph (target only)", **{"multi_domain": False, **params})
