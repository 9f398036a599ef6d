"""Free user vectors that EntityGraph's tower learns to regress onto (offline training).

Why (docs/results.md, "Where EMCDR's zero-shot edge comes from"): EMCDR's pipeline —
a user vector fitted freely to each user's items, then a mapping regressed onto those
vectors — ranks zero-shot users better than EntityGraph's one-stage softmax, even with
EntityGraph's own user vector as the mapping's input. So training gives every training
user a free vector p_u in the model's item space, fitted by the same softmax as the
tower (p_u · V_d over each view's domain, the view's positives), and adds

    distill · mean_b ‖tower(MeKB_b) − sg(p_u)‖² / K

to the loss: the tower learns to predict, from a (partly hidden) MeKB, the vector that
fits the user's whole history, and the item table is shaped by free user vectors as an
MF's is. The free vectors exist in training only (checkpointed for an exact resume);
serving and the saved model hold the tower and the item table alone, so a user unseen
in training is still embedded from the MeKB.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

FILE = "user-vectors.safetensors"
USERS = "user-vectors.json"
INIT_STD = 0.01  # as the ID baselines' tables


class UserVectors(nn.Module):
    def __init__(self, users: Sequence[str], dim: int, seed: int) -> None:
        super().__init__()
        self.users = list(users)
        self._row = {u: k for k, u in enumerate(self.users)}
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(len(self.users), dim, generator=gen) * INIT_STD)

    def rows(self, users: Sequence[str]) -> Tensor:
        return self.table[torch.tensor([self._row[u] for u in users], dtype=torch.long)]

    @staticmethod
    def distance(tower: Tensor, free: Tensor) -> Tensor:
        """Mean over the batch of ‖tower − sg(free)‖² / K: only the tower is pulled."""
        return ((tower - free.detach()) ** 2).mean()

    def save(self, directory: Path) -> None:
        save_file({"table": self.table.detach().contiguous()}, str(directory / FILE))
        (directory / USERS).write_text(json.dumps(self.users), encoding="utf-8")

    def load(self, directory: Path) -> bool:
        """Restore the vectors a checkpoint holds; False when it holds none or holds
        another set of users (they then start again)."""
        if not (directory / FILE).is_file() or not (directory / USERS).is_file():
            return False
        if json.loads((directory / USERS).read_text(encoding="utf-8")) != self.users:
            return False
        with torch.no_grad():
            self.table.copy_(load_file(str(directory / FILE))["table"])
        return True
