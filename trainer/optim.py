"""Optimiser and schedule of MeKB-Rec §4.2: LAMB, lr 5e-4, weight decay 5e-4, cosine
decay after a linear warm-up (one epoch in the paper).

LAMB comes from PyPI `pytorch-optimizer` (maintained); biases and LayerNorm weights
get no weight decay (the usual BERT practice).

The continuous trainer (trainer/online/loop.py) uses the same `make_optimizer`, with
AdamW at lr 5e-5 by default: LAMB's trust ratio makes lr 5e-5 nearly freeze a
pretrained tower (tests/unit/test_online_parity.py then misses parity), so LAMB online
wants the paper's 5e-4 (MEKB_TRAINER_OPTIMIZER=lamb MEKB_TRAINER_LR=5e-4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm", "norm.weight")


def param_groups(
    model: nn.Module, weight_decay: float, item_lr: float | None = None
) -> list[dict]:
    """decay / no-decay groups; with `item_lr`, the ID item table gets its own group
    with that lr and no layer-wise adaptation (`adam: True`, see make_optimizer)."""
    decay, no_decay, items = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if item_lr is not None and name == "item_table":
            items.append(param)
        elif any(k in name for k in NO_DECAY):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if items:
        groups.append({"params": items, "weight_decay": 0.0, "lr": item_lr, "adam": True})
    return groups


def make_optimizer(
    model: nn.Module,
    lr: float = 5e-4,
    weight_decay: float = 5e-4,
    name: str = "lamb",
    item_lr: float | None = None,
) -> torch.optim.Optimizer:
    """LAMB (or AdamW). `item_lr`: the ID table trains with plain Adam steps at that lr.

    Why: LAMB scales each tensor's step by ||w|| / ||update||. For a freshly initialised
    ID table (small norm, one tensor of n_items × K) that makes every row move by ~lr·std
    per step — the items would barely leave their initialisation in a CPU-sized run.
    Row-wise ID embeddings are the textbook case for a plain (sparse-friendly) Adam step.
    """
    groups = param_groups(model, weight_decay, item_lr)
    if name == "lamb":
        from pytorch_optimizer import Lamb

        # foreach=False: the per-parameter path honours the per-group `adam` flag.
        for g in groups:
            g.setdefault("adam", False)
        return Lamb(groups, lr=lr, weight_decay=weight_decay, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (lamb, adamw)")


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, floor: float = 0.0) -> float:
    """LR multiplier: linear 0→1 over warm-up, then cosine 1→floor at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup_steps, total_steps)
    )


def optimizer_state_to_safetensors(
    state: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into tensors (for safetensors) and JSON-able
    scalars and param groups: checkpoints never pickle."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, slots in state["state"].items():
        scalars["state"].setdefault(str(pid), {})
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars["state"][str(pid)][name] = value
    return tensors, scalars


def optimizer_state_from_safetensors(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> dict[str, Any]:
    """The inverse of `optimizer_state_to_safetensors`, for `load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, slots in scalars["state"].items():
        state.setdefault(int(pid), {}).update(slots)
    return {"state": state, "param_groups": scalars["param_groups"]}
