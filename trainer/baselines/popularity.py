"""Most popular target-domain items in training (same list for every user)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from trainer.data.scenario import Scenario


class Popularity:
    name = "Popularity"

    def fit(self, scenario: Scenario, seed: int) -> None:
        counts = Counter(r.item_id for r in scenario.train if r.domain == scenario.target)
        self.vector = np.array([counts.get(i, 0) for i in scenario.target_items()], float)

    def score(self, users: Sequence[str]) -> np.ndarray:
        return np.tile(self.vector, (len(users), 1))
