"""Offline EmbedMe training on a CDR scenario (MeKB-Rec §4.2).

Batching by user: in the offline setting a user has one MeKB (from training
interactions) and many target-domain positives, so each step encodes each user of
the batch once and uses the multi-positive full softmax over the target domain
(trainer/losses.py): an epoch over ml-100k is ~1k encoder forwards, not ~50k.

No copying: a positive is never in the user's own input text. Each epoch, per user
(deterministic in seed, epoch, user):
- with probability `p_cold` (and always with a single target positive) every target-
  domain item is removed from the MeKB and all of them are positives — exactly the
  zero-shot test condition (MeKB from the source domain only);
- otherwise a random half of the target items are positives and the other half stay
  in the MeKB — the few/multi-shot condition.
Otherwise the model would learn to find the positive's own entities in the text, which
never happens at test time.

Checkpoints (resumable after SIGINT or a crash), written in this order: model weights
(safetensors) → optimiser state (safetensors + JSON) → `progress.json` last, atomically;
`progress.json` names the position to resume from, so a checkpoint whose progress file
is missing is ignored. No pickle anywhere.

Distributed: launched by `torchrun`, each rank takes every world-th user of the
(identically shuffled) epoch order and DistributedDataParallel averages gradients
(gloo on CPU, nccl on GPU). One CPU process works the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mekb.durable import write_text_atomic
from trainer.data.mekb import MeKBBuilder
from trainer.data.scenario import Scenario
from trainer.losses import multi_positive_softmax, sampled_softmax_logq
from trainer.model import EmbedMe
from trainer.optim import (
    build_scheduler,
    make_optimizer,
    optimizer_state_from_safetensors,
    optimizer_state_to_safetensors,
)

logger = logging.getLogger(__name__)

PROGRESS = "progress.json"
MODEL_DIR = "model"
OPT_TENSORS = "optimizer.safetensors"
OPT_META = "optimizer.json"


class TrainingInterrupted(Exception):
    """SIGINT arrived; a checkpoint was written (its directory is the message)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_users: int = 32  # users per micro-batch (one encoder forward each)
    accum_steps: int = 1  # micro-batches per optimiser step
    lr: float = 5e-4
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    optimizer: str = "lamb"
    item_lr: float | None = 5e-3  # plain-Adam lr of the ID item table (None: same as lr)
    loss: str = "full"  # full | sampled
    sampled_negatives: int = 1024
    p_cold: float = 0.5
    max_positives: int = 64
    freeze_layers: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50  # optimiser steps
    progress: bool = True


@dataclass
class TrainResult:
    steps: int = 0
    epochs_done: int = 0
    examples: int = 0  # (user, positive) pairs
    users_seen: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None


@dataclass
class UserBatch:
    users: list[str]
    texts: list[str]
    positives: Tensor  # [B, P] item rows
    pos_mask: Tensor  # [B, P] bool

    @property
    def n_examples(self) -> int:
        return int(self.pos_mask.sum())


class UserExamples:
    """Per-epoch user batches of a scenario for one model (text + positive rows)."""

    def __init__(self, scenario: Scenario, model: EmbedMe, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.model = model
        self.target = scenario.target
        self.mekb = MeKBBuilder(scenario.entities, scenario.train, k_star=model.config.k_star)
        by_user = scenario.train_by_user(scenario.target)
        self.users = sorted(u for u, items in by_user.items() if items)
        self.target_items = {u: sorted(by_user[u]) for u in self.users}

    def epoch_order(self, epoch: int) -> list[str]:
        order = list(self.users)
        random.Random(f"{self.cfg.seed}-order-{epoch}").shuffle(order)
        return order

    def n_batches(self, world: int = 1) -> int:
        per_rank = math.ceil(len(self.users) / world)
        return math.ceil(per_rank / self.cfg.batch_users)

    def view(self, user: str, epoch: int) -> tuple[str, list[str]]:
        items = self.target_items[user]
        rng = random.Random(f"{self.cfg.seed}-{epoch}-{user}")
        if len(items) == 1 or rng.random() < self.cfg.p_cold:
            positives = list(items)
        else:
            positives = rng.sample(items, len(items) // 2)
        hidden = set(items) if len(positives) == len(items) else set(positives)
        if len(positives) > self.cfg.max_positives:
            positives = rng.sample(positives, self.cfg.max_positives)
        text = self.mekb.text(user, self.model.config.max_tokens, exclude=hidden)
        return text, positives

    def batches(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[UserBatch]:
        order = self.epoch_order(epoch)
        mine = order[rank::world]
        # every rank runs the same number of batches (DDP all-reduces each backward):
        # a short rank wraps around to the start of the order
        per_rank = math.ceil(len(order) / world)
        mine += order[: per_rank - len(mine)]
        for start in range(0, len(mine), self.cfg.batch_users):
            users = mine[start : start + self.cfg.batch_users]
            texts, rows = [], []
            for u in users:
                text, pos = self.view(u, epoch)
                texts.append(text)
                rows.append(self.model.item_rows(pos).tolist())
            width = max(len(r) for r in rows)
            positives = torch.zeros(len(users), width, dtype=torch.long)
            mask = torch.zeros(len(users), width, dtype=torch.bool)
            for i, r in enumerate(rows):
                positives[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = True
            yield UserBatch(users, texts, positives, mask)


def ensure_items(model: EmbedMe, scenario: Scenario) -> None:
    """Every scenario item gets a row (known ids keep theirs)."""
    ids = sorted(scenario.items)
    model.add_items(ids, [scenario.items[i].domain for i in ids])


# ---- checkpoints ------------------------------------------------------------------------


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Optimiser state without pickle: tensors → safetensors, the rest → JSON."""
    tensors, meta = optimizer_state_to_safetensors(optimizer.state_dict())
    save_file(tensors, str(directory / OPT_TENSORS))
    _write_json_atomic(directory / OPT_META, meta)


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    meta = json.loads((directory / OPT_META).read_text(encoding="utf-8"))
    optimizer.load_state_dict(
        optimizer_state_from_safetensors(load_file(str(directory / OPT_TENSORS)), meta))


def save_checkpoint(
    directory: Path, model: EmbedMe, optimizer: torch.optim.Optimizer, progress: dict[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """`extra(directory)` writes what else a trainer resumes from (after the optimiser,
    before the position that makes the checkpoint complete)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(directory / PROGRESS, {**progress, "complete": False})
    model.save(directory / MODEL_DIR)  # 1. weights
    save_optimizer(optimizer, directory)  # 2. optimiser
    if extra is not None:
        extra(directory)
    _write_json_atomic(directory / PROGRESS, {**progress, "complete": True})  # 3. position
    logger.info("checkpoint at step %s -> %s", progress.get("step"), directory)


def read_progress(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / PROGRESS
    if not path.is_file():
        return None
    progress = json.loads(path.read_text(encoding="utf-8"))
    return progress if progress.get("complete") else None


# ---- distributed ------------------------------------------------------------------------


def dist_info() -> tuple[int, int, bool]:
    """(rank, world, distributed) — initialises the process group when launched by
    torchrun (RANK and WORLD_SIZE set), also for a single process."""
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


class _Sigint:
    """Turns SIGINT into a flag checked between steps (checkpoint, then stop)."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> _Sigint:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, no graceful stop
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.hit = True
        logger.warning("SIGINT: writing a checkpoint after this step, then stopping")

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ---- training ---------------------------------------------------------------------------


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The global RNG's seed for one micro-batch (distinct per rank: DDP replicas draw
    their own dropout masks)."""
    return (((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_024 + rank) % (2**63)


def train(
    model: EmbedMe,
    scenario: Scenario,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train `model` on the scenario's target-domain training positives."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    rank, world, distributed = dist_info()
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() \
            else "cpu"
    ensure_items(model, scenario)
    model.freeze_lower_layers(cfg.freeze_layers)
    data = UserExamples(scenario, model, cfg)
    if not data.users:
        raise ValueError("the scenario has no target-domain training positives")
    per_epoch = math.ceil(data.n_batches(world) / cfg.accum_steps)
    total_steps = per_epoch * cfg.epochs
    result = TrainResult()
    start_epoch, skip_batches = 0, 0
    progress = read_progress(checkpoint_dir) if (checkpoint_dir and resume) else None
    if progress is not None:
        assert checkpoint_dir is not None
        saved = EmbedMe.load(checkpoint_dir / MODEL_DIR)
        if saved.item_ids != model.item_ids:
            raise ValueError(f"checkpoint {checkpoint_dir} was trained on other items")
        model.load_state_dict(saved.state_dict())
        start_epoch, skip_batches = int(progress["epoch"]), int(progress["batch"])
        result.steps = result.resumed_from = int(progress["step"])
        result.examples = int(progress.get("examples", 0))
        logger.info("resuming from %s at epoch %d batch %d", checkpoint_dir, start_epoch,
                    skip_batches)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.optimizer, cfg.item_lr)
    if progress is not None:
        assert checkpoint_dir is not None
        load_optimizer(optimizer, checkpoint_dir)
    scheduler = build_scheduler(
        optimizer, int(round(cfg.warmup_epochs * per_epoch)), total_steps
    )
    with warnings.catch_warnings():  # torch warns of a step before any optimiser step
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(result.steps):  # schedule position (LambdaLR: a function of it)
            scheduler.step()
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device != "cpu" else None)
    domain_rows = torch.nonzero(model.domain_mask(scenario.target)).squeeze(1)
    proposal = _popularity(model, scenario, domain_rows).to(device)
    t0 = time.perf_counter()

    def position(epoch: int, batch: int) -> dict[str, Any]:
        return {"epoch": epoch, "batch": batch, "step": result.steps,
                "examples": result.examples, "config": asdict(cfg), "world": world}

    with _Sigint() as sigint:
        for epoch in range(start_epoch, cfg.epochs):
            bar = tqdm(
                total=data.n_batches(world), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not cfg.progress or rank != 0, unit="batch",
            )
            bar.update(skip_batches if epoch == start_epoch else 0)
            micro = 0
            for b, batch in enumerate(data.batches(epoch, rank, world)):
                if epoch == start_epoch and b < skip_batches:
                    continue
                # dropout masks and sampled negatives drawn from (seed, epoch, batch, rank):
                # a resumed run draws what the uninterrupted one drew at the same batch
                torch.manual_seed(batch_seed(cfg.seed, epoch, b, rank))
                enc = model.tokenize(batch.texts)
                ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                pos, pmask = batch.positives.to(device), batch.pos_mask.to(device)
                if cfg.loss == "sampled":
                    emb = net(ids, mask, embed_only=True)
                    loss = sampled_softmax_logq(
                        emb, model.item_table, pos, pmask, domain_rows, proposal,
                        cfg.sampled_negatives,
                    )
                else:
                    loss = multi_positive_softmax(net(ids, mask, scenario.target), pos, pmask)
                (loss / cfg.accum_steps).backward()
                micro += 1
                result.examples += batch.n_examples
                result.users_seen += len(batch.users)
                last_of_epoch = b == data.n_batches(world) - 1
                if micro % cfg.accum_steps == 0 or last_of_epoch:
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    result.steps += 1
                    result.losses.append(float(loss.detach()))
                    bar.set_postfix(
                        loss=f"{result.losses[-1]:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}"
                    )
                    stop = sigint.hit or (max_steps is not None and result.steps >= max_steps)
                    if checkpoint_dir and rank == 0 and (
                        stop or result.steps % cfg.checkpoint_every == 0
                    ):
                        save_checkpoint(checkpoint_dir, model, optimizer, position(epoch, b + 1))
                    if stop:
                        bar.close()
                        result.seconds = time.perf_counter() - t0
                        if sigint.hit:
                            raise TrainingInterrupted(str(checkpoint_dir))
                        return result
                bar.update(1)
            bar.close()
            skip_batches = 0
            result.epochs_done = epoch + 1
            if checkpoint_dir and rank == 0:
                save_checkpoint(checkpoint_dir, model, optimizer, position(epoch + 1, 0))
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result


def _popularity(model: EmbedMe, scenario: Scenario, domain_rows: Tensor) -> Tensor:
    """Proposal for sampled softmax: smoothed training popularity over the domain."""
    counts = torch.ones(len(domain_rows), dtype=torch.float64)
    where = {int(r): i for i, r in enumerate(domain_rows.tolist())}
    for it in scenario.train:
        if it.domain == scenario.target and model.has_item(it.item_id):
            j = where.get(int(model.item_rows([it.item_id])[0]))
            if j is not None:
                counts[j] += 1
    return (counts / counts.sum()).to(torch.float32)
