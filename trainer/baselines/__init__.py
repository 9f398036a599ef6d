"""Methods in the evaluation harness (trainer/evaluate.py `Scorer`): MeKB-Rec and its
w/o-PLM ablation, popularity, a target-only YoutubeDNN-style two-tower, EMCDR, CMF."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.evaluate import Scorer


def method_factories(
    *, embedme: dict[str, Any] | None = None, id_dim: int = 64, id_epochs: int = 30
) -> dict[str, Callable[[], Scorer]]:
    """Every method by its table name; `embedme`: kwargs of EmbedMeScorer."""
    from trainer.baselines.embedme import EmbedMeScorer
    from trainer.baselines.mf import CMF, EMCDR
    from trainer.baselines.popularity import Popularity
    from trainer.baselines.youtubednn import YoutubeDNN

    kw = embedme or {}
    return {
        "Popularity": Popularity,
        "YoutubeDNN (target only)": lambda: YoutubeDNN(dim=id_dim, epochs=id_epochs),
        "EMCDR": lambda: EMCDR(dim=id_dim, epochs=id_epochs),
        "CMF": lambda: CMF(dim=id_dim, epochs=id_epochs),
        "w/o PLM": lambda: EmbedMeScorer(pretrained=False, **kw),
        "MeKB-Rec": lambda: EmbedMeScorer(pretrained=True, **kw),
    }
