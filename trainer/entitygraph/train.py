"""Offline EntityGraph training on a scenario (resumable), the counterpart of
trainer/offline.py for EmbedMe, sharing its checkpoint format and SIGINT handling:
weights (safetensors) → optimiser state → progress.json last; Ctrl-C writes a
checkpoint after the current step and raises TrainingInterrupted.

Every (user, domain) view of an epoch is one row of a batch; a batch holds one domain
so its softmax runs over that domain's items only (full softmax, as EmbedMe).
`multi_domain=False` trains on the target domain only — the ablation that measures
what the source-domain signal adds.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from linker.base import PRODUCT
from trainer import averaging
from trainer.data.scenario import Scenario
from trainer.entitygraph.data import MeKBIndex, ViewBatch, Views
from trainer.entitygraph.distill import UserVectors
from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
from trainer.entitygraph.vectors import EntityVectorCache, TitleEncoder
from trainer.losses import multi_positive_softmax
from trainer.offline import (
    MODEL_DIR,
    TrainingInterrupted,
    TrainResult,
    _Sigint,
    load_optimizer,
    read_progress,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntityGraphTrainConfig:
    # defaults chosen on ml-100k's validation split (zero-shot users), docs/results.md
    epochs: int = 20
    batch_users: int = 32  # views per batch
    lr: float = 1e-3  # Adam: attention, MLP, item table
    entity_lr: float = 1e-2  # Adam: the entity vectors (fine-tuned from the encoder's)
    weight_decay: float = 0.0
    p_cold: float = 0.5
    max_positives: int = 64
    max_entities: int = 0  # 0 = the whole MeKB (no cut)
    multi_domain: bool = True  # every domain a target; False: the scenario's target only
    grad_clip: float = 5.0
    # the model trained is the EMA of its weights (trainer/averaging.py), decay per
    # optimiser step; 0 = the last step's weights. Chosen on validation (docs/results.md)
    ema_decay: float = 0.995
    # weight of the pull of the tower's vector toward each training user's free vector
    # (trainer/entitygraph/distill.py); 0 = no free vectors. Chosen on validation
    distill: float = 10.0
    kg_batch: int = 2048  # TransE triples per step (with a tied knowledge graph)
    seed: int = 0
    checkpoint_every: int = 50  # optimiser steps
    progress: bool = True


def scenario_domains(scenario: Scenario) -> list[str]:
    return sorted({it.domain for it in scenario.items.values()})


def scenario_entities(scenario: Scenario) -> tuple[list[str], list[str]]:
    """(ids, titles) of every entity linked to a scenario item, in first-seen order."""
    titles: dict[str, str] = {}
    for item in sorted(scenario.entities):
        for ent in scenario.entities[item]:
            titles.setdefault(ent.entity_id, ent.title)
    return list(titles), list(titles.values())


def build_model(config: EntityGraphConfig, scenario: Scenario, *,
                cache: EntityVectorCache | None = None, cache_dir: Path | None = None,
                seed: int = 0) -> EntityGraph:
    """A fresh model with a row for every scenario entity (title vectors from the
    cache; random unit-scale vectors for the w/o-PLM ablation) and every item."""
    ids, titles = scenario_entities(scenario)
    torch.manual_seed(seed)
    if config.pretrained:
        if cache is None:
            cache = EntityVectorCache(cache_dir, TitleEncoder(config.encoder))
        vectors = cache.get(ids, titles)
        dim = cache.encoder.dim
        config = replace(config, encoder_fingerprint=cache.encoder.fingerprint)
    else:
        dim = vector_dim_of(config.encoder)
        gen = np.random.default_rng(seed)
        vectors = (gen.standard_normal((len(ids), dim)) / math.sqrt(dim)).astype(np.float32)
    model = EntityGraph(config, dim)
    model.add_entities(ids, vectors)
    kg = getattr(scenario, "kg", None)
    if config.kg_dim > 0 and kg is not None:
        # a MeKB entity that is a KG node is tied to it; an item's product entity to the
        # node the item links to (ml-100k: Freebase ids, never MeKB entities)
        node = kg.entity_index()
        links = {e: node[e] for e in model.entity_ids if e in node}
        links.update({f"{PRODUCT}:{item}": nodes[0] for item, nodes in kg.item_links.items()
                      if nodes})
        model.attach_kg(kg.n_entities, kg.n_relations, links, entity_ids=kg.entities,
                        relation_ids=kg.relations)
    items = sorted(scenario.items)
    model.add_items(items, [scenario.items[i].domain for i in items])
    return model


def vector_dim_of(encoder: str | None) -> int:
    from transformers import AutoConfig

    from trainer.model import default_encoder

    return int(AutoConfig.from_pretrained(encoder or default_encoder()).hidden_size)


def make_index(model: EntityGraph, scenario: Scenario) -> MeKBIndex:
    return MeKBIndex(scenario.entities, scenario.train, model._erow,
                     scenario_domains(scenario), k_star=model.config.k_star)


def _checkpoint(directory: Path, model: EntityGraph, optimizer: torch.optim.Optimizer,
                progress: dict[str, Any], ema: AveragedModel | None,
                free: UserVectors | None) -> None:
    # trainer/offline.py's checkpoint order and format; it only calls model.save(). The
    # raw weights are what training resumes from; the average and the free user vectors
    # are saved beside them.
    def extra(d: Path) -> None:
        if ema is not None:
            averaging.save(ema, d)
        if free is not None:
            free.save(d)

    save_checkpoint(directory, model, optimizer, progress, extra=extra)  # type: ignore[arg-type]


def _step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step) * 2 + stream


def _add_group(optimizer: torch.optim.Optimizer, free: UserVectors,
               cfg: EntityGraphTrainConfig) -> None:
    optimizer.add_param_group({"params": [free.table], "lr": cfg.entity_lr,
                               "weight_decay": 0.0})


def make_optimizer(model: EntityGraph, cfg: EntityGraphTrainConfig) -> torch.optim.Optimizer:
    dense = [p for n, p in model.named_parameters()
             if p.requires_grad and n not in ("entity_table", "item_table")]
    groups: list[dict[str, Any]] = [
        {"params": dense, "weight_decay": cfg.weight_decay},
        {"params": [model.item_table], "weight_decay": 0.0},
    ]
    if model.entity_table.requires_grad:
        groups.append({"params": [model.entity_table], "lr": cfg.entity_lr, "weight_decay": 0.0})
    return torch.optim.Adam(groups, lr=cfg.lr)


def train(
    model: EntityGraph,
    scenario: Scenario,
    cfg: EntityGraphTrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    max_steps: int | None = None,
) -> TrainResult:
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    domains = scenario_domains(scenario) if cfg.multi_domain else [scenario.target]
    domain_rows = {d: model.domain_rows(d) for d in domains}
    item_col = {d: {model.item_ids[int(r)]: j for j, r in enumerate(rows)}
                for d, rows in domain_rows.items()}
    views = Views(make_index(model, scenario), item_col, domains, seed=cfg.seed,
                  batch_users=cfg.batch_users, p_cold=cfg.p_cold,
                  max_positives=cfg.max_positives, max_entities=cfg.max_entities)
    if not views.tasks:
        raise ValueError("the scenario has no training positives")
    result = TrainResult()
    start_epoch, skip = 0, 0
    progress = read_progress(checkpoint_dir) if (checkpoint_dir and resume) else None
    if progress is not None:
        assert checkpoint_dir is not None
        saved = EntityGraph.load(checkpoint_dir / MODEL_DIR)
        if saved.item_ids != model.item_ids or saved.entity_ids != model.entity_ids:
            raise ValueError(f"checkpoint {checkpoint_dir} was trained on other items/entities")
        model.load_state_dict(saved.state_dict())
        start_epoch, skip = int(progress["epoch"]), int(progress["batch"])
        result.steps = result.resumed_from = int(progress["step"])
        result.examples = int(progress.get("examples", 0))
        logger.info("resuming from %s at epoch %d batch %d", checkpoint_dir, start_epoch, skip)
    model.train()
    optimizer = make_optimizer(model, cfg)
    ema = averaging.averaged(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    free = UserVectors(sorted(views.index.users), model.out_dim, cfg.seed) \
        if cfg.distill > 0 else None
    # trained as the entity vectors are (free rows of a table); their optimiser group
    # joins before a checkpoint's optimiser state is loaded only if that holds them
    restored = free is not None and progress is not None and checkpoint_dir is not None \
        and free.load(checkpoint_dir)
    if free is not None and (progress is None or restored):
        _add_group(optimizer, free, cfg)
    if progress is not None:
        assert checkpoint_dir is not None
        load_optimizer(optimizer, checkpoint_dir)
        if free is not None and not restored:
            logger.info("checkpoint %s holds no free user vectors: they start now",
                        checkpoint_dir)
            _add_group(optimizer, free, cfg)
        if ema is not None and not averaging.load(ema, checkpoint_dir):
            logger.info("checkpoint %s holds no weight average: it starts now", checkpoint_dir)
    # re-seeded every step from (seed, step): a resumed run draws the dropout masks and
    # TransE samples an uninterrupted one would have drawn at the same steps
    drop_gen, kg_gen = torch.Generator(), torch.Generator()
    kg = getattr(scenario, "kg", None)
    transe = model.transe
    triples = torch.tensor(kg.triples) if transe is not None and kg is not None \
        and len(kg.triples) else None
    t0 = time.perf_counter()

    def position(epoch: int, batch: int) -> dict[str, Any]:
        return {"epoch": epoch, "batch": batch, "step": result.steps, "examples":
                result.examples, "config": asdict(cfg), "kind": "entitygraph", "world": 1}

    # the next epoch's views are built in a thread while this one trains (numpy and
    # torch release the GIL for most of it): on 2 cores that hides ~15 % of an epoch
    pool = ThreadPoolExecutor(max_workers=1)
    upcoming: Future[list[ViewBatch]] = pool.submit(views.batches, start_epoch)
    with _Sigint() as sigint, pool:
        for epoch in range(start_epoch, cfg.epochs):
            batches = upcoming.result()
            if epoch + 1 < cfg.epochs:
                upcoming = pool.submit(views.batches, epoch + 1)
            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not cfg.progress, unit="batch")
            first = skip if epoch == start_epoch else 0
            bar.update(first)
            for b in range(first, len(batches)):
                batch = batches[b]
                mask = batch.mask
                drop_gen.manual_seed(_step_seed(cfg.seed, result.steps, 0))
                kg_gen.manual_seed(_step_seed(cfg.seed, result.steps, 1))
                if model.config.dropout > 0:
                    keep = torch.rand(mask.shape, generator=drop_gen) >= model.config.dropout
                    mask = mask & keep
                users = model.encode_rows(batch.rows, batch.scores, mask)
                items = model.item_table[domain_rows[batch.domain]].t()  # one gather
                loss = multi_positive_softmax(users @ items, batch.positives, batch.pos_mask)
                if free is not None:
                    mine = free.rows(batch.users)
                    loss = loss + multi_positive_softmax(mine @ items, batch.positives,
                                                         batch.pos_mask) \
                        + cfg.distill * UserVectors.distance(users, mine)
                if triples is not None and transe is not None:
                    pick = torch.randint(len(triples), (cfg.kg_batch,), generator=kg_gen)
                    loss = loss + model.config.kg_weight * transe.loss(
                        triples[pick], model.config.kg_margin, kg_gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                if transe is not None:
                    transe.renorm()
                if ema is not None:
                    ema.update_parameters(model)
                result.steps += 1
                result.examples += batch.n_examples
                result.users_seen += len(batch.rows)
                result.losses.append(float(loss.detach()))
                bar.update(1)
                stop = sigint.hit or (max_steps is not None and result.steps >= max_steps)
                if checkpoint_dir and (stop or result.steps % cfg.checkpoint_every == 0):
                    _checkpoint(checkpoint_dir, model, optimizer, position(epoch, b + 1),
                                ema, free)
                if stop:
                    bar.close()
                    result.seconds = time.perf_counter() - t0
                    model.eval()
                    if sigint.hit:
                        raise TrainingInterrupted(str(checkpoint_dir))
                    if ema is not None:
                        averaging.copy_into(model, ema)
                    return result
            bar.close()
            skip = 0
            result.epochs_done = epoch + 1
            if checkpoint_dir:
                _checkpoint(checkpoint_dir, model, optimizer, position(epoch + 1, 0), ema, free)
    result.seconds = time.perf_counter() - t0
    model.eval()
    if ema is not None:
        averaging.copy_into(model, ema)
    return result
