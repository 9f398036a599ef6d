"""Training speed of the second paper's models (trainer/kgrec) on ml-100k.

    nice -n 10 python bench/bench_kgrec.py [--epochs 2] [--repeat 3] [--methods smf,base,...]

Every method is fitted `--repeat` times for `--epochs` epochs on the drama -> action
scenario (seed 0; every domain's training records, as in the harness), runs interleaved
(A B C ... A B C ...) so that load from other users of a shared machine hits all alike.
Reported: median (user, positive) training examples per second, one example = one
training record (with its sampled negatives, and for KGE a TransE batch of the same
size per step), and the ratio to SMF (BPR matrix factorisation: the floor cost of an ID
model) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.data.atomic import load_ml100k  # noqa: E402
from trainer.data.scenario import ScenarioConfig, build_scenario  # noqa: E402
from trainer.kgrec.scorers import METHODS, SHORT  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", default=",".join(SHORT))
    args = ap.parse_args()
    names = [SHORT[m.strip()] for m in args.methods.split(",")]
    if "SMF (BPR)" not in names:
        names.insert(0, "SMF (BPR)")
    t0 = time.perf_counter()
    sc = build_scenario(load_ml100k(), ScenarioConfig("drama", "action",
                                                      min_item_positives=10, seed=0))
    rates: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeat):
        for name in names:
            scorer = METHODS[name](epochs=args.epochs)
            scorer.fit(sc, seed=0)
            assert scorer.result is not None
            rates[name].append(scorer.result.examples_per_s)
    smf = statistics.median(rates["SMF (BPR)"])
    out = {
        "train_records": len(sc.train), "kg_triples": len(sc.kg.triples) if sc.kg else 0,
        "epochs": args.epochs, "repeat": args.repeat,
        "examples_per_s": {n: round(statistics.median(r)) for n, r in rates.items()},
        "ratio_to_smf": {n: round(statistics.median(r) / smf, 3) for n, r in rates.items()},
        "seconds_per_epoch": {n: round(len(sc.train) / statistics.median(r), 2)
                              for n, r in rates.items()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
