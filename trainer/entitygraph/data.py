"""MeKBs of a scenario as entity rows + MeKBScores, and the training views over them.

A user's MeKB comes from their training interactions of every domain (as
trainer/data/mekb.py): k(u, e) = Σ entity weights, MeKBScore by `mekb.scoring`'s
formula (s(k)·idf, normalised; s(k) alone when every idf is 0), computed with numpy
per user so a view costs tens of microseconds.

Training views (as trainer/offline.py, no copying — a positive never sits in its own
input): for a (user, domain), with probability `p_cold` (always with one positive) all
of the user's items of that domain are hidden from the MeKB and are the positives —
the zero-shot condition; otherwise a random half are positives and the rest stay.
With `domains` = every domain (multi-domain training), a user's entities also learn to
predict their items of the source domain(s), so entities of zero-shot users' histories
are trained on those users' own source records.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from linker.base import LinkedEntity
from trainer.data.base import Interaction


@dataclass
class _UserMeKB:
    items: list[str]  # the user's training items
    item_domain: np.ndarray  # int domain index per item
    pair_item: np.ndarray  # per (item, entity) pair: index into items
    pair_ent: np.ndarray  # per pair: index into ents
    pair_w: np.ndarray  # per pair: entity weight
    ents: np.ndarray  # the user's entity rows (global, unique)


class MeKBIndex:
    """Every user's MeKB over entity rows `entity_row` (entity id → row)."""

    def __init__(
        self,
        entities: Mapping[str, list[LinkedEntity]],
        train: Sequence[Interaction],
        entity_row: Mapping[str, int],
        domains: Sequence[str],
        *,
        k_star: float = 5.0,
    ) -> None:
        self.k_star = k_star
        self.domains = list(domains)
        dom = {d: i for i, d in enumerate(self.domains)}
        items_of: dict[str, list[Interaction]] = defaultdict(list)
        for r in train:
            items_of[r.user_id].append(r)
        df = np.zeros(max(entity_row.values(), default=-1) + 1, dtype=np.float64)
        self.users: dict[str, _UserMeKB] = {}
        for user, recs in items_of.items():
            items = [r.item_id for r in recs]
            pi, pe, pw = [], [], []
            local: dict[int, int] = {}
            for n, r in enumerate(recs):
                for ent in entities.get(r.item_id, ()):
                    row = entity_row.get(ent.entity_id)
                    if row is None:
                        continue
                    pi.append(n)
                    pe.append(local.setdefault(row, len(local)))
                    pw.append(ent.weight)
            ents = np.fromiter(local, dtype=np.int64, count=len(local))
            df[ents] += 1
            self.users[user] = _UserMeKB(
                items, np.array([dom.get(r.domain, -1) for r in recs], dtype=np.int64),
                np.array(pi, dtype=np.int64), np.array(pe, dtype=np.int64),
                np.array(pw, dtype=np.float64), ents)
        n_users = len(self.users)
        with np.errstate(divide="ignore"):
            self.idf = np.where(df > 0, np.log(np.maximum(n_users, df) / np.maximum(df, 1)), 0.0)

    def mekb(self, user: str, hidden: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(entity rows, MeKBScores) of `user`, best first; `hidden` [n items of the
        user] bool: those interactions are left out (the user's positives)."""
        u = self.users.get(user)
        if u is None or len(u.ents) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        w = u.pair_w if hidden is None else u.pair_w * ~hidden[u.pair_item]
        k = np.bincount(u.pair_ent, weights=w, minlength=len(u.ents))
        present = k > 0
        ents, k = u.ents[present], k[present]
        ks = self.k_star
        s = np.where(k <= ks, k, ks * (1.0 + np.log(np.maximum(k, 1e-300) / ks)))
        weight = s * self.idf[ents]
        if weight.sum() <= 0:
            weight = s
        total = weight.sum()
        if total <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        order = np.argsort(-weight, kind="stable")
        return ents[order], (weight[order] / total).astype(np.float32)

    def mekb_excluding(self, user: str, exclude: Collection[str]) -> tuple[np.ndarray,
                                                                          np.ndarray]:
        u = self.users.get(user)
        if u is None or not exclude:
            return self.mekb(user)
        return self.mekb(user, np.array([i in exclude for i in u.items], dtype=bool))


def pad(mekbs: Sequence[tuple[np.ndarray, np.ndarray]],
        max_entities: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """rows [B, L] int64, scores [B, L] float32, mask [B, L] bool (L ≥ 1; with
    `max_entities`, each MeKB keeps its best ones — they come best first)."""
    lengths = [len(r) if not max_entities else min(len(r), max_entities) for r, _ in mekbs]
    width = max(1, max(lengths, default=1))
    rows = np.zeros((len(mekbs), width), dtype=np.int64)
    scores = np.zeros((len(mekbs), width), dtype=np.float32)
    mask = np.zeros((len(mekbs), width), dtype=bool)
    for i, ((r, s), n) in enumerate(zip(mekbs, lengths, strict=True)):
        rows[i, :n], scores[i, :n], mask[i, :n] = r[:n], s[:n], True
    return torch.from_numpy(rows), torch.from_numpy(scores), torch.from_numpy(mask)


@dataclass
class ViewBatch:
    domain: str
    rows: Tensor  # [B, L] entity rows
    scores: Tensor  # [B, L]
    mask: Tensor  # [B, L] bool
    positives: Tensor  # [B, P] column within the domain's item rows
    pos_mask: Tensor  # [B, P] bool
    users: list[str]  # whose view each row is

    @property
    def n_examples(self) -> int:
        return int(self.pos_mask.sum())


class Views:
    """Per-epoch batches of training views, deterministic in (seed, epoch)."""

    def __init__(self, index: MeKBIndex, item_col: Mapping[str, Mapping[str, int]],
                 domains: Sequence[str], *, seed: int, batch_users: int, p_cold: float = 0.5,
                 max_positives: int = 64, max_entities: int = 0) -> None:
        """item_col: domain → item id → column in that domain's item rows."""
        self.index = index
        self.item_col = item_col
        self.domains = list(domains)
        self.seed, self.batch_users, self.p_cold = seed, batch_users, p_cold
        self.max_positives, self.max_entities = max_positives, max_entities
        self.tasks: list[tuple[str, str]] = []  # (user, domain) with positives there
        for user, u in sorted(index.users.items()):
            for d in self.domains:
                di = index.domains.index(d)
                if any(u.item_domain == di) and any(i in item_col[d] for i in u.items):
                    self.tasks.append((user, d))

    def n_batches(self) -> int:
        per: dict[str, int] = defaultdict(int)
        for _, d in self.tasks:
            per[d] += 1
        return sum(math.ceil(n / self.batch_users) for n in per.values())

    def _view(self, user: str, domain: str, epoch: int) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                  list[int]]:
        u = self.index.users[user]
        di = self.index.domains.index(domain)
        cols = self.item_col[domain]
        mine = [n for n in np.flatnonzero(u.item_domain == di) if u.items[n] in cols]
        rng = random.Random(f"{self.seed}-{epoch}-{user}-{domain}")
        if len(mine) == 1 or rng.random() < self.p_cold:
            positives = list(mine)
            hidden = np.zeros(len(u.items), dtype=bool)
            hidden[np.flatnonzero(u.item_domain == di)] = True
        else:
            positives = rng.sample(mine, len(mine) // 2)
            hidden = np.zeros(len(u.items), dtype=bool)
            hidden[positives] = True
        if len(positives) > self.max_positives:
            positives = rng.sample(positives, self.max_positives)
        return self.index.mekb(user, hidden), [cols[u.items[n]] for n in positives]

    def batches(self, epoch: int) -> list[ViewBatch]:
        """All batches of the epoch: tasks shuffled, grouped by domain (one softmax per
        batch), sorted by MeKB size within windows of 32 batches (little padding), and
        the batches shuffled again."""
        rng = random.Random(f"{self.seed}-views-{epoch}")
        out: list[ViewBatch] = []
        for d in self.domains:
            tasks = [t for t in self.tasks if t[1] == d]
            rng.shuffle(tasks)
            window = 32 * self.batch_users
            for w in range(0, len(tasks), window):
                chunk = tasks[w : w + window]
                chunk.sort(key=lambda t: len(self.index.users[t[0]].ents))
                for s in range(0, len(chunk), self.batch_users):
                    out.append(self._batch(chunk[s : s + self.batch_users], d, epoch))
        rng.shuffle(out)
        return out

    def _batch(self, tasks: Sequence[tuple[str, str]], domain: str, epoch: int) -> ViewBatch:
        mekbs, pos = [], []
        for user, _ in tasks:
            m, p = self._view(user, domain, epoch)
            mekbs.append(m)
            pos.append(p)
        rows, scores, mask = pad(mekbs, self.max_entities)
        width = max(len(p) for p in pos)
        positives = torch.zeros(len(tasks), width, dtype=torch.long)
        pmask = torch.zeros(len(tasks), width, dtype=torch.bool)
        for i, p in enumerate(pos):
            positives[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            pmask[i, : len(p)] = True
        return ViewBatch(domain, rows, scores, mask, positives, pmask, [u for u, _ in tasks])
