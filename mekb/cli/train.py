"""`mekb train`: offline training of a model kind (EmbedMe, EntityGraph) on a
cross-domain scenario (resumable)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from mekb.cli.common import CliError

DATASET_HELP = (
    "synthetic[:SEED] | ml100k | atomic:DIR[:NAME] | amazon:DOMAIN=REVIEWS[,META];... | "
    "generic:INTERACTIONS[,ITEMS]"
)


def scenario_config(dataset: str, scenario: str | None, seed: int, min_item: int | None,
                    min_user: int) -> Any:
    from trainer.data.scenario import ScenarioConfig
    from trainer.data.specs import default_scenario

    if scenario:
        source, sep, target = scenario.partition(":")
        if not sep or not source or not target:
            raise CliError(f"--scenario must be SOURCE:TARGET, not {scenario!r}")
    else:
        pair = default_scenario(dataset)
        if pair is None:
            raise CliError("--scenario SOURCE:TARGET is required for this dataset")
        source, target = pair
    if min_item is None:  # paper: 50; the small bundled datasets cannot afford it
        kind = dataset.partition(":")[0]
        min_item = {"synthetic": 5, "ml100k": 10}.get(kind, 50)
    return ScenarioConfig(source, target, min_user_positives=min_user,
                          min_item_positives=min_item, seed=seed)


def load(dataset: str, use_linker: bool) -> Any:
    from trainer.data.base import DatasetError
    from trainer.data.specs import load_dataset

    linker = None
    if use_linker:
        from linker import build_linker
        from mekb.cli.common import settings_with

        linker = build_linker(settings_with())
    try:
        return load_dataset(dataset, linker=linker)
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    finally:
        if linker is not None:
            linker.close()


def train(
    dataset: str = typer.Option(..., "--dataset", help=DATASET_HELP),
    scenario: str = typer.Option(None, "--scenario", help="SOURCE:TARGET domains "
                                 "(default: drama:action for ml100k, books:movies synthetic)."),
    out: Path = typer.Option(..., "--out", help="Output folder: model/, checkpoint/, train.json."),
    seed: int = typer.Option(0, "--seed", help="Scenario split, initialisation and order."),
    model_kind: str = typer.Option("embedme", "--model", help="Model kind: embedme | "
                                   "entitygraph | a second-paper model (smf, base, kge, "
                                   "multd, multd-kge, multd-gnn, multd-kge-gnn: seconds to "
                                   "minutes, no checkpoint)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Default 3 (embedme), "
                               "20 (entitygraph)."),
    batch_users: int = typer.Option(32, "--batch-users", min=1, help="Users per micro-batch."),
    accum: int = typer.Option(1, "--accum", min=1, help="Micro-batches per optimiser step."),
    lr: float = typer.Option(None, "--lr", help="Default 5e-4 (embedme), 1e-3 (entitygraph)."),
    item_lr: float = typer.Option(5e-3, "--item-lr", help="Adam lr of the ID item table."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=8, help="64 = CPU profile; "
                                   "paper: 256."),
    freeze_layers: int = typer.Option(4, "--freeze-layers", min=0,
                                      help="Freeze embeddings + lowest N layers (CPU profile)."),
    dim: int = typer.Option(None, "--dim", min=1, help="K. Default 256 (embedme), "
                            "64 (entitygraph)."),
    encoder: str = typer.Option(None, "--encoder", help="HF encoder directory "
                                "(default all-MiniLM-L6-v2)."),
    no_plm: bool = typer.Option(False, "--no-plm", help="w/o-PLM ablation (random init)."),
    entity_lr: float = typer.Option(1e-2, "--entity-lr", help="EntityGraph: Adam lr of the "
                                    "entity vectors."),
    multi_domain: bool = typer.Option(True, "--multi-domain/--target-only", help="EntityGraph: "
                                      "every domain a target, or the target domain only."),
    ema_decay: float = typer.Option(0.995, "--ema-decay", min=0.0, max=0.9999,
                                    help="EntityGraph: the model saved is the exponential "
                                    "moving average of its weights, this decay per step "
                                    "(0 = the last step's weights)."),
    distill: float = typer.Option(10.0, "--distill", min=0.0, help="EntityGraph: weight of "
                                  "the pull of the tower toward free per-user vectors "
                                  "trained beside it (training only; 0 = none)."),
    entity_cache: Path = typer.Option(None, "--entity-cache", help="EntityGraph title-vector "
                                      "cache (default MEKB_DATA_DIR/entity-vectors)."),
    loss: str = typer.Option("full", "--loss", help="full | sampled (log-Q corrected)."),
    min_item: int = typer.Option(None, "--min-item-positives", help="Item filter "
                                 "(default 50; 10 ml100k; 5 synthetic)."),
    min_user: int = typer.Option(5, "--min-user-positives"),
    use_linker: bool = typer.Option(False, "--linker", help="Link item text with the "
                                    "configured linker (needs the alias table)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from "
                                "OUT/checkpoint if present."),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Stop after N steps."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1,
                                         help="Optimiser steps between checkpoints."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a model kind on a CDR scenario; Ctrl-C writes a checkpoint, rerun to resume."""
    from trainer.data.scenario import build_scenario
    from trainer.kgrec.scorers import SHORT as KGREC
    from trainer.model import EmbedMe, EmbedMeConfig
    from trainer.offline import TrainConfig
    from trainer.offline import train as run_training

    if model_kind not in ("embedme", "entitygraph", *KGREC):
        raise CliError(f"--model must be embedme, entitygraph or one of {', '.join(KGREC)}, "
                       f"not {model_kind!r}")
    if loss not in ("full", "sampled"):
        raise CliError(f"--loss must be full or sampled, not {loss!r}")
    sc_cfg = scenario_config(dataset, scenario, seed, min_item, min_user)
    data = load(dataset, use_linker)
    try:
        sc = build_scenario(data, sc_cfg)
    except Exception as exc:  # DatasetError and friends: user-fixable
        raise CliError(str(exc)) from None
    if model_kind == "entitygraph":
        _train_entitygraph(
            sc, out, dataset=dataset, seed=seed, epochs=epochs or 20,
            batch_users=batch_users, lr=1e-3 if lr is None else lr, entity_lr=entity_lr,
            dim=dim or 64, encoder=encoder, pretrained=not no_plm,
            multi_domain=multi_domain, ema_decay=ema_decay, distill=distill, cache=entity_cache,
            resume=resume, max_steps=max_steps, checkpoint_every=checkpoint_every,
            progress=progress)
        return
    if model_kind in KGREC:
        _train_kgrec(sc, out, dataset=dataset, seed=seed, method=KGREC[model_kind],
                     params={k: v for k, v in (("epochs", epochs), ("lr", lr), ("dim", dim))
                             if v is not None})
        return
    epochs, lr, dim = epochs or 3, 5e-4 if lr is None else lr, dim or 256
    model_cfg = EmbedMeConfig(encoder=encoder, dim=dim, max_tokens=max_tokens,
                              pretrained=not no_plm)
    train_cfg = TrainConfig(epochs=epochs, batch_users=batch_users, accum_steps=accum, lr=lr,
                            item_lr=item_lr, loss=loss, freeze_layers=freeze_layers, seed=seed,
                            progress=progress, checkpoint_every=checkpoint_every)
    import torch

    torch.manual_seed(seed)
    model = EmbedMe(model_cfg)
    result = _resumable(run_training, model, sc, train_cfg, out, resume=resume,
                        max_steps=max_steps)
    import torch.distributed as dist

    if dist.is_initialized():  # torchrun: rank 0 writes the outputs
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    model.save(out / "model")
    summary = {
        "dataset": dataset, "scenario": asdict(sc_cfg), "stats": sc.stats(),
        "model": asdict(model_cfg), "training": asdict(train_cfg),
    }
    _write_summary(out, summary, result)


def _resumable(run_training: Any, model: Any, sc: Any, train_cfg: Any, out: Path, *,
               resume: bool, max_steps: int | None) -> Any:
    """Train with checkpoints in OUT/checkpoint; SIGINT ends with exit 130 and the line
    that says how to resume (the same for every kind with a resumable loop)."""
    from trainer.offline import TrainingInterrupted

    try:
        return run_training(model, sc, train_cfg, checkpoint_dir=out / "checkpoint",
                            resume=resume, max_steps=max_steps)
    except TrainingInterrupted:
        typer.echo(f"interrupted: checkpoint in {out / 'checkpoint'}; rerun the same "
                   "command to resume", err=True)
        raise typer.Exit(130) from None


def _write_summary(out: Path, summary: dict[str, Any], result: Any) -> None:
    """`OUT/train.json` (the run's configuration and result) and the one-line report."""
    summary = {**summary, "result": {**asdict(result), "losses": result.losses[-20:]},
               "examples_per_s": result.examples / result.seconds if result.seconds else None}
    (out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(f"trained {result.steps} steps ({result.examples} examples, "
               f"{result.seconds:.0f} s); model in {out / 'model'}")


def _train_entitygraph(sc: Any, out: Path, *, dataset: str, seed: int, epochs: int,
                       batch_users: int, lr: float, entity_lr: float, dim: int,
                       encoder: str | None, pretrained: bool, multi_domain: bool,
                       ema_decay: float, distill: float, cache: Path | None, resume: bool,
                       max_steps: int | None, checkpoint_every: int, progress: bool) -> None:
    from mekb.cli.common import settings_with
    from trainer.entitygraph.model import EntityGraphConfig
    from trainer.entitygraph.train import EntityGraphTrainConfig, build_model
    from trainer.entitygraph.train import train as run_training

    model_cfg = EntityGraphConfig(dim=dim, encoder=encoder, pretrained=pretrained)
    train_cfg = EntityGraphTrainConfig(
        epochs=epochs, batch_users=batch_users, lr=lr, entity_lr=entity_lr,
        multi_domain=multi_domain, ema_decay=ema_decay, distill=distill, seed=seed,
        checkpoint_every=checkpoint_every, progress=progress)
    model = build_model(model_cfg, sc, seed=seed,
                        cache_dir=cache or settings_with().data_dir / "entity-vectors")
    result = _resumable(run_training, model, sc, train_cfg, out, resume=resume,
                        max_steps=max_steps)
    model.save(out / "model")
    summary = {
        "dataset": dataset, "kind": "entitygraph", "scenario": asdict(sc.config),
        "stats": sc.stats(), "model": asdict(model.config), "training": asdict(train_cfg),
    }
    _write_summary(out, summary, result)


def _train_kgrec(sc: Any, out: Path, *, dataset: str, seed: int, method: str,
                 params: dict[str, Any]) -> None:
    """A second-paper model (trainer/kgrec): trained in one go — an epoch takes seconds,
    so there is no checkpoint to resume from."""
    from trainer.kgrec.scorers import METHODS

    try:
        scorer = METHODS[method](**params)
        scorer.fit(sc, seed)
    except ValueError as exc:  # e.g. a KGE model on a dataset without knowledge graph
        raise CliError(str(exc)) from None
    assert scorer.result is not None
    scorer.save(out / "model")
    result = scorer.result
    summary = {
        "dataset": dataset, "kind": "kgrec", "method": method, "scenario": asdict(sc.config),
        "stats": sc.stats(), "model": asdict(scorer.config),
        "result": {"epochs": result.epochs, "examples": result.examples,
                   "seconds": result.seconds, "losses": result.losses[-20:]},
        "examples_per_s": result.examples_per_s,
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(f"trained {method}: {result.epochs} epochs ({result.examples} examples, "
               f"{result.seconds:.0f} s, {result.examples_per_s:.0f} examples/s); model in "
               f"{out / 'model'}")
