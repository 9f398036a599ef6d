"""Adam on the rows of a table that a step touched (the continuous trainer's entity and
TransE tables): torch.optim.Adam's update with torch.optim.SparseAdam's lazy moments —
untouched rows and their moments stay as they are — kept in the optimiser's own state
for the table, so checkpoints keep their format.

Two ways to the same update, chosen by the share of rows touched:
- few rows: gather the rows and their moments, update them, scatter them back;
- most rows (a small live vocabulary, where a batch touches most entities): torch's
  fused whole-table Adam kernel with a zero gradient on the untouched rows, whose
  values and moments are saved before and put back after. The gathers and scatters of
  the first way cost more than the fused kernel's pass over the whole table once more
  than about half the rows are touched (4 000 x 384 table, 3 400 rows: 5.4-9.0 ms
  gathered vs 2.0 ms for the fused pass alone, docs/benchmarks.md)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as functional_adam

# touched rows / table rows above which the fused whole-table way is taken
WHOLE_TABLE_SHARE = 0.5


@torch.no_grad()
def adam_rows(optimizer: torch.optim.Optimizer, param: Tensor, rows: Tensor,
              grad: Tensor, *, whole_table_share: float = WHOLE_TABLE_SHARE) -> None:
    """Adam's update of `param`'s `rows` (unique) with their gradient `grad`."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    if group.get("amsgrad") or group.get("maximize") or group.get("decoupled_weight_decay"):
        raise ValueError("adam_rows: amsgrad/maximize/decoupled weight decay are not supported")
    state = optimizer.state[param]
    if not state:
        state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(param),
                     exp_avg_sq=torch.zeros_like(param))
    if len(rows) > whole_table_share * len(param) and param.device.type == "cpu":
        _whole_table(group, state, param, rows, grad)
    else:
        _gathered(group, state, param, rows, grad)


def _gathered(group: dict[str, Any], state: dict[str, Any], param: Tensor, rows: Tensor,
              grad: Tensor) -> None:
    state["step"] += 1
    step = float(state["step"])
    beta1, beta2 = group["betas"]
    if group["weight_decay"]:
        grad = grad.add(param.index_select(0, rows), alpha=group["weight_decay"])
    # index_select / index_copy_: row gathers and scatters, several times faster on a
    # CPU than advanced indexing
    exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(
        grad, grad, value=1 - beta2)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
    denom = exp_avg_sq.sqrt_().div_(math.sqrt(1 - beta2 ** step)).add_(group["eps"])
    param.index_add_(0, rows, exp_avg.div_(denom), alpha=-group["lr"] / (1 - beta1 ** step))


def _whole_table(group: dict[str, Any], state: dict[str, Any], param: Tensor, rows: Tensor,
                 grad: Tensor) -> None:
    idle = torch.ones(len(param), dtype=torch.bool, device=param.device)
    idle[rows] = False
    rest = idle.nonzero().squeeze(1)
    tensors = (param, state["exp_avg"], state["exp_avg_sq"])
    saved = [t.index_select(0, rest) for t in tensors]
    full = torch.zeros_like(param).index_copy_(0, rows, grad)
    beta1, beta2 = group["betas"]
    # the functional form of torch.optim.Adam (it counts the step itself)
    functional_adam([param], [full], [state["exp_avg"]], [state["exp_avg_sq"]], [],
                    [state["step"]], fused=True, amsgrad=False, beta1=beta1, beta2=beta2,
                    lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=False)
    for t, kept in zip(tensors, saved, strict=True):
        t.index_copy_(0, rest, kept)
