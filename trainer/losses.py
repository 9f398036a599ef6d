"""Retrieval losses over a domain's items.

- `multi_positive_softmax`: full softmax over the target domain's items; a user with
  several positives contributes the mean of -log p(positive) over them. Exact, and
  cheap while the catalogue fits one matmul (up to ~1e5-1e6 items × K=256 per batch).
- `sampled_softmax_logq`: for catalogues too large for that — the positives plus M
  items sampled from a proposal q (e.g. popularity), each logit corrected by
  -log(M·q) (log-Q correction, Bengio & Senécal; Yi et al. 2019) so the estimate of
  the full-softmax gradient is not biased toward popular items. Switch when the
  [batch, n_items] logits no longer fit memory or dominate step time.
"""

from __future__ import annotations

import torch
from torch import Tensor


def multi_positive_softmax(logits: Tensor, positives: Tensor, pos_mask: Tensor) -> Tensor:
    """logits [B, I] (-inf outside the domain); positives [B, P] row indices, pos_mask
    [B, P] bool (padding False). Mean over users of the mean -log softmax of positives."""
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(1, positives.clamp(min=0))
    # padding may point at an out-of-domain row (-inf): select, never multiply by 0
    picked = torch.where(pos_mask, picked, torch.zeros_like(picked))
    count = pos_mask.sum(1).clamp(min=1).to(logp.dtype)
    per_user = -picked.sum(1) / count
    return per_user.mean()


def sampled_softmax_logq(
    user_emb: Tensor,
    item_table: Tensor,
    positives: Tensor,
    pos_mask: Tensor,
    domain_rows: Tensor,
    proposal: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sampled softmax with log-Q correction.

    domain_rows [D]: item-table rows of the domain; proposal [D]: q over them (sums to
    1). Each user's positive competes against the same M sampled rows (shared negatives),
    corrected by -log(M·q); a sampled row equal to the positive is masked out."""
    idx = torch.multinomial(proposal, n_samples, replacement=True, generator=generator)
    neg_rows = domain_rows[idx]  # [M]
    neg_logits = user_emb @ item_table[neg_rows].t() - torch.log(n_samples * proposal[idx])
    # the positive is not drawn from q, so its logit is not corrected: the corrected
    # negatives estimate the rest of the partition function (Jean et al. 2015)
    pos_logits = (user_emb.unsqueeze(1) * item_table[positives.clamp(min=0)]).sum(-1)  # [B, P]
    # [B, P, 1 + M]: for every positive, itself then the shared negatives
    hit = positives.unsqueeze(-1) == neg_rows.view(1, 1, -1)
    negs = neg_logits.unsqueeze(1).expand(-1, positives.shape[1], -1).masked_fill(
        hit, float("-inf"))
    full = torch.cat([pos_logits.unsqueeze(-1), negs], dim=-1)
    nll = -torch.log_softmax(full, dim=-1)[..., 0]
    nll = torch.where(pos_mask, nll, torch.zeros_like(nll))
    return (nll.sum(1) / pos_mask.sum(1).clamp(min=1).to(nll.dtype)).mean()
