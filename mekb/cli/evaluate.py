"""`mekb evaluate`: one harness, two protocols, every registered method
(trainer/evaluate.py `METHODS`).

- `--protocol mekb-rec` (default): one scenario SOURCE[,SOURCE...]:TARGET; HR@10 /
  NDCG@10 (1 + 999 sampled negatives, and full ranking) and filtered MRR / Hit@100,
  overall and per bucket (zero/few/multi-shot);
- `--protocol multidomain` (the second paper): every domain in turn the target, all
  others the sources; filtered MRR / Hit@100 (and HR/NDCG@10) of each domain's
  zero-shot users.
Mean ± std over seeds; `--tune-budget N` fits every method on the same N
configurations of its search space and tests the best on validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mekb.cli.common import CliError
from mekb.cli.train import DATASET_HELP, load, scenario_config

# what `--methods all` runs, in table order (the registry may hold more)
ALL = ("popularity", "youtubednn", "emcdr", "cmf", "noplm", "mekb", "smf", "base", "kge",
       "multd", "multd-kge", "multd-gnn", "multd-kge-gnn", "entitygraph")


def evaluate(
    dataset: str = typer.Option(..., "--dataset", help=DATASET_HELP),
    scenario: str = typer.Option(None, "--scenario", help="SOURCE[,SOURCE...]:TARGET domains "
                                 "(mekb-rec protocol)."),
    protocol: str = typer.Option("mekb-rec", "--protocol",
                                 help="mekb-rec (one scenario, buckets) or multidomain (every "
                                      "domain in turn the target)."),
    domains: str = typer.Option(None, "--domains", help="multidomain: comma list of domains "
                                "(default: all of the dataset's)."),
    model: Path = typer.Option(None, "--model", help="Evaluate this `mekb train --out` "
                               "folder on its own scenario seed (no retraining)."),
    methods: str = typer.Option("all", "--methods", help="Comma list of method names "
                                "(see the list in the error for an unknown one) or all."),
    seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="Comma list of seeds."),
    tune_budget: int = typer.Option(0, "--tune-budget", min=0, help="Configurations of each "
                                    "method's search space fitted and compared on validation "
                                    "(0: defaults, no tuning)."),
    tune_criterion: str = typer.Option("zero-shot:HR@10", "--tune-criterion",
                                       help="BUCKET:METRIC of the validation split to maximise."),
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
    """Run the evaluation protocols (Tables 1 and 5 layout; the second paper's per-domain
    zero-shot table)."""
    from trainer.data.scenario import build_scenario
    from trainer.evaluate import (
        METHODS,
        PROTOCOLS,
        MethodOptions,
        markdown_multidomain,
        markdown_tables,
        method_factory,
        run_experiment,
    )
    from trainer.evaluate import evaluate as eval_one

    if protocol not in PROTOCOLS:
        raise CliError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    bucket, sep, metric = tune_criterion.partition(":")
    if not sep or not bucket or not metric:
        raise CliError(f"--tune-criterion must be BUCKET:METRIC, not {tune_criterion!r}")
    data = load(dataset, use_linker)
    if model is not None:
        from trainer.baselines.embedme import EmbedMeScorer
        from trainer.data.scenario import ScenarioConfig
        from trainer.model import EmbedMe

        info = json.loads((model / "train.json").read_text())
        saved: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in info["scenario"].items()}
        sc = build_scenario(data, ScenarioConfig(**saved))
        from trainer.kinds import kind_of

        if info.get("kind") == "kgrec":  # a second-paper model: `mekb train --model kge` ...
            from trainer.kgrec.scorers import KGRecScorer

            scorer: Any = KGRecScorer.load(model / "model", sc)
        elif kind_of(model / "model") == "entitygraph":
            from trainer.entitygraph.model import EntityGraph
            from trainer.entitygraph.scorer import EntityGraphScorer

            scorer = EntityGraphScorer()
            scorer.attach(EntityGraph.load(model / "model"), sc)
        else:
            scorer = EmbedMeScorer()
            scorer.attach(EmbedMe.load(model / "model"), sc)
        result = eval_one(scorer, sc, seed=sc.config.seed, n_negatives=negatives)
        typer.echo(json.dumps(result, indent=2))
        return
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds must be a comma list of integers, not {seeds!r}") from None
    wanted = list(ALL) if methods == "all" else [m.strip().lower() for m in methods.split(",")
                                                 if m.strip()]
    for m in wanted:
        if m not in METHODS:
            raise CliError(f"unknown method {m!r}: {', '.join(METHODS)}")
    options = MethodOptions(epochs=epochs, batch_users=batch_users, max_tokens=max_tokens,
                            freeze_layers=freeze_layers, id_epochs=id_epochs, progress=progress)
    chosen = {METHODS[m][0]: method_factory(m, options) for m in wanted}
    domain_list = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
    if protocol == "multidomain":
        names = domain_list or data.domains()
        unknown = [d for d in names if d not in data.domains()]
        if len(names) < 2 or unknown:
            raise CliError(f"--domains: need two or more of {data.domains()}, got {names}")
        first, rest = names[-1], ",".join(names[:-1])
        sc_cfg = scenario_config(dataset, f"{rest}:{first}", 0, min_item, min_user)
    else:
        sc_cfg = scenario_config(dataset, scenario, 0, min_item, min_user)
    records = run_experiment(data, sc_cfg, chosen, seed_list, n_negatives=negatives,
                             out_jsonl=out, protocol=protocol, domains=domain_list,
                             tune_budget=tune_budget, criterion=tune_criterion)
    records = [r for r in records if r.method in chosen and r.seed in seed_list
               and r.protocol == protocol]
    if not records:
        raise CliError("no run finished")
    if protocol == "multidomain":
        tables = [markdown_multidomain(records, tuned=False),
                  markdown_multidomain(records, ("HR@10", "NDCG@10"), tuned=False),
                  markdown_multidomain(records, bucket="all")]
    else:
        tables = [markdown_tables(records, tuned=False), "Filtered full ranking\n\n"
                  + markdown_tables(records, ("MRR", "Hit@100"))]
    table = "\n\n".join(tables)
    if markdown is not None:
        markdown.write_text(table + "\n")
    typer.echo(table)
