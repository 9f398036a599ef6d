"""Bayesian Personalized Ranking (Rendle et al. 2009): the loss of SMF, the paper's
single-domain factorisation baseline (ID tables, no domains: its negatives are drawn
from the whole catalogue, as for a model that does not know items have domains)."""

from __future__ import annotations

from torch import Tensor, nn


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Mean of −log σ(s⁺ − s⁻); pos [B], neg [B, M]."""
    return -nn.functional.logsigmoid(pos_scores.unsqueeze(-1) - neg_scores).mean()
