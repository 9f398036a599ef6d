"""Item-tower refit (the paper's hourly online update): user tower frozen, the item
table refit on the recent window with the full softmax over each example's domain.

The frozen tower is the *published* user tower of the active version (its ONNX, as
served), not the still-moving torch model: the refit table is published as an
`items` version that ships that same tower, so its rows must fit it. With user
vectors fixed, the problem is a softmax regression in the item vectors: a few
epochs of Adam over cached user embeddings, seconds even for a large window.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefitResult:
    table: np.ndarray  # float32 [n_items, dim]
    loss_before: float
    loss_after: float
    n_examples: int


def initial_table(
    item_ids: Sequence[str], dim: int, *, sources: Sequence[tuple[Sequence[str], np.ndarray]],
    seed: int = 0, std: float = 0.02,
) -> np.ndarray:
    """Start rows: the first source that knows an item (e.g. the tower's own bundle,
    then the live model), else small random values."""
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((len(item_ids), dim)) * std).astype(np.float32)
    filled = np.zeros(len(item_ids), dtype=bool)
    for ids, values in sources:
        if values.ndim != 2 or values.shape[1] != dim:
            continue
        index = {item: i for i, item in enumerate(ids)}
        for row, item in enumerate(item_ids):
            if not filled[row] and item in index:
                table[row] = values[index[item]]
                filled[row] = True
    return table


def _domain_masks(item_domains: Sequence[str], domains: Sequence[str]) -> tuple[
        torch.Tensor, torch.Tensor]:
    names = sorted(set(domains))
    lookup = {d: i for i, d in enumerate(names)}
    masks = torch.tensor([[d == name for d in item_domains] for name in names],
                         dtype=torch.bool)
    return masks, torch.tensor([lookup[d] for d in domains], dtype=torch.long)


def softmax_loss(users: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                 masks: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the targets under the full softmax of their domain."""
    logits = (users @ table.t()).masked_fill(~masks, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets)


def refit_items(
    users: np.ndarray, target_items: Sequence[str], domains: Sequence[str],
    item_ids: Sequence[str], item_domains: Sequence[str], init: np.ndarray, *,
    epochs: int, lr: float, batch_size: int = 256, seed: int = 0,
    weight_decay: float = 0.0,
) -> RefitResult:
    """Fit the item table to fixed user vectors. Items of a domain no window example
    targets keep their start values (masked out of every softmax, no gradient)."""
    index: Mapping[str, int] = {item: i for i, item in enumerate(item_ids)}
    keep = [i for i, t in enumerate(target_items) if t in index]
    if not keep:
        return RefitResult(init.astype(np.float32), float("nan"), float("nan"), 0)
    u = torch.from_numpy(np.ascontiguousarray(users[keep], dtype=np.float32))
    targets = torch.tensor([index[target_items[i]] for i in keep], dtype=torch.long)
    masks, ex_domain = _domain_masks(item_domains, [domains[i] for i in keep])
    table = torch.nn.Parameter(torch.from_numpy(np.array(init, dtype=np.float32)))
    # Rows that never get a gradient keep zero Adam moments and do not move (unless
    # weight decay is asked for).
    optimizer = torch.optim.Adam([table], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)

    def full_loss() -> float:
        with torch.no_grad():
            return float(softmax_loss(u, table, targets, masks[ex_domain]))

    before = full_loss()
    n = len(keep)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = softmax_loss(u[idx], table, targets[idx], masks[ex_domain[idx]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    after = full_loss()
    logger.info("item refit: %d examples, %d items, loss %.4f -> %.4f", n, len(item_ids),
                before, after)
    return RefitResult(table.detach().numpy().copy(), before, after, n)
