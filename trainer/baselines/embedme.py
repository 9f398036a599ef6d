"""MeKB-Rec (EmbedMe trained offline) and its w/o-PLM ablation as harness methods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from trainer.data.mekb import MeKBBuilder
from trainer.data.scenario import Scenario
from trainer.model import EmbedMe, EmbedMeConfig
from trainer.offline import TrainConfig, TrainResult, train


class EmbedMeScorer:
    def __init__(
        self,
        *,
        pretrained: bool = True,
        model: EmbedMeConfig | None = None,
        training: TrainConfig | None = None,
        save_dir: Path | None = None,
    ) -> None:
        self.name = "MeKB-Rec" if pretrained else "w/o PLM"
        self.model_config = replace(model or EmbedMeConfig(), pretrained=pretrained)
        self.train_config = training or TrainConfig()
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
