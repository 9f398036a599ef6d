"""Atomic training checkpoints: weights, optimiser state and Kafka offsets together.

Layout under the trainer's state dir:

    checkpoints/ckpt-000000012/  model.safetensors, optimizer.safetensors, state.json
    checkpoints/LATEST           name of the newest complete checkpoint

A checkpoint is written into `.tmp-*`, fsynced, renamed into place, and only then
does LATEST move to it (os.replace is atomic). A crash at any point leaves LATEST
naming a complete checkpoint. The offsets inside are the next offsets to consume,
so a restart re-reads every example that the weights have not seen yet; they hold
for the topic whose id is recorded beside them (`topic_ids`).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mekb.durable import fsync_tree, write_text_atomic
from trainer.optim import optimizer_state_from_safetensors, optimizer_state_to_safetensors

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """Everything besides tensors that a restart needs."""

    step: int = 0
    examples_seen: int = 0
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    # topic -> id of the topic those offsets were read from (mekb/topics.py): a topic with
    # another id (re-created, or the embedded broker restarted) starts at offset 0 again
    topic_ids: dict[str, str] = field(default_factory=dict)
    item_ids: list[str] = field(default_factory=list)  # row order of the item table
    item_domains: list[str] = field(default_factory=list)
    parent_version: str | None = None  # registry version the weights descend from
    last_publish_at: float = 0.0
    last_refit_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: TrainerState

    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def optimizer_file(self) -> Path:
        return self.path / "optimizer.safetensors"


class CheckpointStore:
    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root = root
        self.keep = max(1, keep)
        self.root.mkdir(parents=True, exist_ok=True)

    def latest(self) -> Checkpoint | None:
        pointer = self.root / "LATEST"
        try:
            name = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        path = self.root / name
        state = TrainerState.from_json((path / "state.json").read_text())
        return Checkpoint(path, state)

    def save(
        self,
        state: TrainerState,
        model_tensors: dict[str, Any],
        optimizer_state: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """Write a complete checkpoint, then point LATEST at it (the commit point)."""
        from safetensors.torch import save_file

        tmp = self.root / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in model_tensors.items()},
                  str(tmp / "model.safetensors"))
        if optimizer_state is not None:
            tensors, scalars = optimizer_state_to_safetensors(optimizer_state)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(scalars))
        (tmp / "state.json").write_text(state.to_json())
        fsync_tree(tmp)
        final = self.root / f"ckpt-{state.step:09d}-{uuid.uuid4().hex[:6]}"
        tmp.rename(final)
        write_text_atomic(self.root / "LATEST", final.name)
        self._prune(final.name)
        return Checkpoint(final, state)

    def load_optimizer(self, ckpt: Checkpoint) -> dict[str, Any] | None:
        from safetensors.torch import load_file

        if not ckpt.optimizer_file.exists():
            return None
        scalars = json.loads((ckpt.path / "optimizer.json").read_text())
        return optimizer_state_from_safetensors(load_file(str(ckpt.optimizer_file)), scalars)

    def _prune(self, current: str) -> None:
        """Drop unfinished temp dirs and all but the newest `keep` checkpoints."""
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        done = sorted(p for p in self.root.glob("ckpt-*") if p.is_dir())
        for old in done[: -self.keep]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)
