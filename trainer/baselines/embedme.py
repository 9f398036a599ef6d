"""MeKB-Rec (EmbedMe trained offline) and its w/o-PLM ablation as harness methods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from trainer.data.mekb import MeKBBuilder
from trainer.data.scenario import Scenario
from trainer.model import EmbedMe, EmbedMeConfig
from trainer.offline import TrainConfig, TrainResult, train


class EmbedMeScorer:
    # tuned on the validation split by the harness; every configuration is a full
    # EmbedMe training, so the grid stays small
    search_space: ClassVar[dict[str, list[Any]]] = {
        "lr": [5e-4, 1e-3, 2e-4], "k_star": [5.0, 2.0]}

    def __init__(
        self,
        *,
        pretrained: bool = True,
        model: EmbedMeConfig | None = None,
        training: TrainConfig | None = None,
        save_dir: Path | None = None,
        **params: Any,
    ) -> None:
        """`params`: search-space names, each a field of EmbedMeConfig or TrainConfig."""
        self.name = "MeKB-Rec" if pretrained else "w/o PLM"
        m_fields = {f.name for f in fields(EmbedMeConfig)}
        t_fields = {f.name for f in fields(TrainConfig)}
        unknown = set(params) - m_fields - t_fields
        if unknown:
            raise TypeError(f"unknown EmbedMe parameters {sorted(unknown)}")
        self.model_config = replace(
            model or EmbedMeConfig(), pretrained=pretrained,
            **{k: v for k, v in params.items() if k in m_fields})
        self.train_config = replace(training or TrainConfig(),
                                    **{k: v for k, v in params.items() if k in t_fields})
        self.save_dir = save_dir
        self.result: TrainResult | None = None

    def fit(self, scenario: Scenario, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = EmbedMe(self.model_config)
        self.result = train(self.model, scenario, replace(self.train_config, seed=seed))
        self.attach(self.model, scenario)
        if self.save_dir is not None:
            self.model.save(self.save_dir / f"{self.name.replace('/', '')}-seed{seed}")

    def attach(self, model: EmbedMe, scenario: Scenario) -> None:
        """Score with an already trained model (e.g. `mekb evaluate --model DIR`)."""
        self.model = model.eval()
        self.mekb = MeKBBuilder(scenario.entities, scenario.train, k_star=model.config.k_star)
        self.rows = model.item_rows(scenario.target_items())

    def score(self, users: Sequence[str]) -> np.ndarray:
        texts = [self.mekb.text(u, self.model.config.max_tokens) for u in users]
        with torch.no_grad():
            emb = self.model.encode_texts(texts)
            table = self.model.item_embeddings()[self.rows.to(emb.device)]
            return (emb @ table.t()).cpu().numpy()
