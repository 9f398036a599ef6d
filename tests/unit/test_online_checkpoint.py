from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.online.checkpoint import CheckpointStore, TrainerState
from trainer.online.holdout import RecentWindow, is_held_out


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


def test_save_and_restore_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, opt = _model_and_optimizer()
    store = CheckpointStore(tmp_path)
    assert store.latest() is None
    state = TrainerState(step=7, offsets={"training-examples:0": 42}, item_ids=["a", "b"])
    store.save(state, model.state_dict(), opt.state_dict())
    ckpt = store.latest()
    assert ckpt is not None and ckpt.state == state
    weights = load_file(str(ckpt.model_file))
    assert torch.equal(weights["weight"], model.weight.detach())
    restored = store.load_optimizer(ckpt)
    assert restored is not None
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=0.1)
    fresh.load_state_dict(restored)
    exp = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], exp)


def test_crash_before_pointer_move_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = _model_and_optimizer()
    store = CheckpointStore(tmp_path)
    store.save(TrainerState(step=1), model.state_dict())

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("mekb.durable.os.replace", boom)
    with pytest.raises(OSError):
        store.save(TrainerState(step=2), model.state_dict())
    monkeypatch.undo()
    latest = store.latest()
    assert latest is not None and latest.state.step == 1
    # the next successful save cleans up and moves on
    store.save(TrainerState(step=3), model.state_dict())
    latest = store.latest()
    assert latest is not None and latest.state.step == 3


def test_pruning_keeps_newest(tmp_path: Path) -> None:
    model, _ = _model_and_optimizer()
    store = CheckpointStore(tmp_path, keep=2)
    for step in range(5):
        store.save(TrainerState(step=step), model.state_dict())
    kept = sorted(p.name.split("-")[1] for p in tmp_path.glob("ckpt-*"))
    assert kept == ["000000003", "000000004"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_holdout_is_stable_and_close_to_fraction() -> None:
    ids = [f"ev-{i}" for i in range(20000)]
    held = [i for i in ids if is_held_out(i, 0.1)]
    assert 0.09 < len(held) / len(ids) < 0.11
    assert held == [i for i in ids if is_held_out(i, 0.1)]
    assert not any(is_held_out(i, 0.0) for i in ids[:100])


def test_recent_window_drops_oldest() -> None:
    window: RecentWindow[int] = RecentWindow(3)
    for i in range(5):
        window.add(i)
    assert list(window) == [2, 3, 4] and len(window) == 3
