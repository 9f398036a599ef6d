"""Row-wise Adam (trainer/online/row_adam.py): both ways (gathered rows, fused whole
table) give torch.optim.Adam's update on the touched rows and leave every other row and
its moments untouched, step after step."""

from __future__ import annotations

import pytest
import torch

from trainer.online.row_adam import adam_rows


def _table(weight_decay: float = 0.0) -> tuple[torch.nn.Parameter, torch.optim.Adam]:
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(50, 6))
    return table, torch.optim.Adam([table], lr=0.01, weight_decay=weight_decay)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("share", [0.0, 1.0])  # 0: always whole table; 1: always gathered
def test_touched_rows_follow_adam_and_idle_rows_keep_values_and_moments(
    share: float, weight_decay: float
) -> None:
    table, opt = _table(weight_decay)
    ref, ref_opt = _table(weight_decay)  # dense Adam on a table of only the touched rows
    gen = torch.Generator().manual_seed(1)
    rows = torch.tensor([2, 3, 17, 40])
    sub = torch.nn.Parameter(ref.detach()[rows].clone())
    sub_opt = torch.optim.Adam([sub], lr=0.01, weight_decay=weight_decay)
    for _ in range(3):  # the same rows each step: lazy Adam equals Adam on them
        grad = torch.randn(len(rows), 6, generator=gen)
        adam_rows(opt, table, rows, grad, whole_table_share=share)
        sub.grad = grad.clone()
        sub_opt.step()
    torch.testing.assert_close(table.detach()[rows], sub.detach())
    state, sub_state = opt.state[table], sub_opt.state[sub]
    torch.testing.assert_close(state["exp_avg"][rows], sub_state["exp_avg"])
    torch.testing.assert_close(state["exp_avg_sq"][rows], sub_state["exp_avg_sq"])
    assert float(state["step"]) == 3.0
    idle = torch.ones(50, dtype=torch.bool)
    idle[rows] = False
    assert torch.equal(table.detach()[idle], ref.detach()[idle])
    assert not state["exp_avg"][idle].any() and not state["exp_avg_sq"][idle].any()
    del ref_opt


def test_both_ways_agree_on_rows_that_change_between_steps() -> None:
    results = []
    for share in (0.0, 1.0):
        table, opt = _table(0.05)
        gen = torch.Generator().manual_seed(2)
        for step in range(4):
            rows = torch.randperm(50, generator=gen)[: 10 + 10 * step].sort().values
            adam_rows(opt, table, rows, torch.randn(len(rows), 6, generator=gen),
                      whole_table_share=share)
        results.append((table.detach().clone(), opt.state[table]["exp_avg"].clone(),
                        opt.state[table]["exp_avg_sq"].clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_unsupported_variants_are_refused() -> None:
    table = torch.nn.Parameter(torch.zeros(4, 2))
    opt = torch.optim.Adam([table], amsgrad=True)
    with pytest.raises(ValueError, match="amsgrad"):
        adam_rows(opt, table, torch.tensor([0]), torch.ones(1, 2))
