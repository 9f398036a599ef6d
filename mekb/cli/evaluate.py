"""`mekb evaluate`: HR@10 / NDCG@10 (1 + 999 sampled negatives, and full ranking),
overall and per bucket, mean ± std over seeds, for MeKB-Rec and the baselines."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from mekb.cli.common import CliError
from mekb.cli.train import DATASET_HELP, load, scenario_config

ALL = ("Popularity", "YoutubeDNN (target only)", "EMCDR", "CMF", "w/o PLM", "MeKB-Rec")
SHORT = {"popularity": "Popularity", "youtubednn": "YoutubeDNN (target only)",
         "emcdr": "EMCDR", "cmf": "CMF", "noplm": "w/o PLM", "mekb": "MeKB-Rec"}


def evaluate(
    dataset: str = typer.Option(..., "--dataset", help=DATASET_HELP),
    scenario: str = typer.Option(None, "--scenario", help="SOURCE:TARGET domains."),
    model: Path = typer.Option(None, "--model", help="Evaluate this `mekb train --out` "
                               "folder on its own scenario seed (no retraining)."),
    methods: str = typer.Option("all", "--methods", help="Comma list of "
                                + ",".join(SHORT) + " or all."),
    seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="Comma list of seeds."),
    out: Path = typer.Option(None, "--out", help="Append per-run records (JSON lines; "
                             "finished runs are skipped on rerun)."),
    markdown: Path = typer.Option(None, "--markdown", help="Write the tables here."),
    epochs: int = typer.Option(3, "--epochs", min=1, help="EmbedMe epochs."),
    batch_users: int = typer.Option(32, "--batch-users", min=1),
    max_tokens: int = typer.Option(64, "--max-tokens", min=8),
    freeze_layers: int = typer.Option(4, "--freeze-layers", min=0,
                                      help="MeKB-Rec only (w/o PLM trains every layer)."),
    id_epochs: int = typer.Option(20, "--id-epochs", min=1, help="ID baselines' epochs."),
    min_item: int = typer.Option(None, "--min-item-positives"),
    min_user: int = typer.Option(5, "--min-user-positives"),
    negatives: int = typer.Option(999, "--negatives", min=1),
    use_linker: bool = typer.Option(False, "--linker"),
    progress: bool = typer.Option(False, "--progress/--no-progress"),
) -> None:
    """Run the paper's evaluation protocol (Tables 1 and 5 layout)."""
    from trainer.data.scenario import build_scenario
    from trainer.evaluate import evaluate as eval_one
    from trainer.evaluate import markdown_tables, run_experiment

    data = load(dataset, use_linker)
    if model is not None:
        from trainer.baselines.embedme import EmbedMeScorer
        from trainer.data.scenario import ScenarioConfig
        from trainer.model import EmbedMe

        info = json.loads((model / "train.json").read_text())
        saved: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in info["scenario"].items()}
        sc = build_scenario(data, ScenarioConfig(**saved))
        scorer = EmbedMeScorer()
        scorer.attach(EmbedMe.load(model / "model"), sc)
        result = eval_one(scorer, sc, seed=sc.config.seed, n_negatives=negatives)
        typer.echo(json.dumps(result, indent=2))
        return
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds must be a comma list of integers, not {seeds!r}") from None
    wanted = list(ALL) if methods == "all" else []
    if not wanted:
        for m in methods.split(","):
            if m.strip().lower() not in SHORT:
                raise CliError(f"unknown method {m!r}: {', '.join(SHORT)}")
            wanted.append(SHORT[m.strip().lower()])
    from trainer.baselines import method_factories
    from trainer.model import EmbedMeConfig
    from trainer.offline import TrainConfig

    base_train = TrainConfig(epochs=epochs, batch_users=batch_users, progress=progress)
    factories = method_factories(
        embedme={"model": EmbedMeConfig(max_tokens=max_tokens), "training": base_train},
        id_epochs=id_epochs,
    )
    plm_train = replace(base_train, freeze_layers=freeze_layers)
    from trainer.baselines.embedme import EmbedMeScorer

    factories["MeKB-Rec"] = lambda: EmbedMeScorer(
        pretrained=True, model=EmbedMeConfig(max_tokens=max_tokens), training=plm_train)
    chosen = {name: factories[name] for name in wanted}
    sc_cfg = scenario_config(dataset, scenario, 0, min_item, min_user)
    records = run_experiment(data, sc_cfg, chosen, seed_list, n_negatives=negatives,
                             out_jsonl=out)
    records = [r for r in records if r.method in chosen and r.seed in seed_list]
    table = markdown_tables(records)
    if markdown is not None:
        markdown.write_text(table + "\n")
    typer.echo(table)
