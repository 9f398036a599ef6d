"""Score one method on the VALIDATION split of a dataset (never the test split), one fit per
configuration and seed: how the design choices in docs/results.md were made and how their
validation tables are reproduced, e.g.

    OMP_NUM_THREADS=1 python bench/validation_probe.py --method entitygraph --seeds 0 1 2 3 \
        --config '{"ema_decay": 0.0}' --config '{}'

Each --config is a JSON object of the method's keyword parameters (for EntityGraph: any
field of EntityGraphConfig or EntityGraphTrainConfig); none = the method's defaults.
Prints one JSON line per (configuration, seed) with every bucket's HR@10 / NDCG@10, then
the zero-shot means over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from mekb.cli.train import load, scenario_config
    from trainer.data.scenario import build_scenario
    from trainer.evaluate import METHODS, evaluate, method_factory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="entitygraph", choices=sorted(METHODS))
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", action="append", default=[],
                        help="JSON object of the method's parameters (repeatable)")
    parser.add_argument("--ensemble", type=int, default=1,
                        help="average the scores of N fits (model seeds seed + 7919·k)")
    args = parser.parse_args()
    try:
        configs = [json.loads(c) for c in args.config] or [{}]
    except ValueError as exc:
        parser.error(f"--config is not JSON: {exc}")
    if not all(isinstance(c, dict) for c in configs):
        parser.error("--config must be a JSON object")
    data = load(args.dataset, False)
    scenarios = {s: build_scenario(data, replace(scenario_config(args.dataset, None, 0, None, 5),
                                                 seed=s)) for s in args.seeds}
    factory = method_factory(args.method)
    if args.ensemble > 1:
        factory = _ensemble(factory, args.ensemble)
    means = []
    for params in configs:
        zero_shot = []
        for seed in args.seeds:
            scorer = factory(**params)
            started = time.perf_counter()
            scorer.fit(scenarios[seed], seed)
            fit_s = time.perf_counter() - started
            m = evaluate(scorer, scenarios[seed], seed=seed, split="valid")
            zero_shot.append((m["zero-shot"]["HR@10"], m["zero-shot"]["NDCG@10"]))
            print(json.dumps({"config": params, "seed": seed, "fit_s": round(fit_s, 1),
                              **{b: [round(m[b]["HR@10"], 4), round(m[b]["NDCG@10"], 4)]
                                 for b in m if "HR@10" in m[b]}}), flush=True)
        means.append((params, statistics.mean(h for h, _ in zero_shot),
                      statistics.mean(n for _, n in zero_shot)))
    print(f"validation zero-shot HR@10 / NDCG@10, mean over seeds {args.seeds}:")
    for params, hr, ndcg in means:
        print(f"  {json.dumps(params)}: {hr:.3f} / {ndcg:.3f}")


def _ensemble(factory, n):  # type: ignore[no-untyped-def]
    import numpy as np

    class Ensemble:
        def __init__(self, **params):  # type: ignore[no-untyped-def]
            self.members = [factory(**params) for _ in range(n)]
            self.name = f"{self.members[0].name} x{n}"

        def fit(self, scenario, seed):  # type: ignore[no-untyped-def]
            for k, member in enumerate(self.members):
                member.fit(scenario, seed + 7919 * k)

        def score(self, users):  # type: ignore[no-untyped-def]
            return np.mean([m.score(users) for m in self.members], axis=0)

    return Ensemble


if __name__ == "__main__":
    main()
