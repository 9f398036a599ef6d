"""Where does EMCDR's zero-shot edge come from? EMCDR's own pipeline (target-domain MF,
an MLP mapping fitted on the overlapping users by MSE, zero-shot users scored with the
mapped vector against the target MF's items) with three mapping inputs, scored on the
VALIDATION split only:

- `source-mf`: the source-domain MF vector (EMCDR itself);
- `entitygraph`: the trained EntityGraph tower's vector of the user's source-only MeKB
  (target items hidden, as at zero-shot time) — inductive;
- `both`: the two concatenated.

    OMP_NUM_THREADS=1 python bench/zero_shot_mapping.py --seeds 0 1 2 3 \
        --entitygraph '{"distill": 0.0, "epochs": 30, "dropout": 0.1}'  # as in docs/results.md

If `entitygraph` scores like `source-mf`, EntityGraph's user representation carries what
EMCDR's does and the gap lies on the target side (the MF item space, the regression
target); if it scores below, the source MF vector is the better input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


class _Fixed:
    def __init__(self, name: str, users: dict[str, int], U: torch.Tensor,
                 V: torch.Tensor) -> None:
        self.name, self.users, self.U, self.V = name, users, U, V

    def fit(self, scenario: object, seed: int) -> None:
        pass

    def score(self, users: list[str]):  # type: ignore[no-untyped-def]
        rows = torch.tensor([self.users[u] for u in users])
        return (self.U[rows] @ self.V.t()).numpy()


def main() -> None:
    from mekb.cli.train import load, scenario_config
    from trainer.baselines.common import softmax_mf
    from trainer.baselines.mf import EMCDR, fit_mapping
    from trainer.data.scenario import build_scenario
    from trainer.entitygraph.scorer import EntityGraphScorer
    from trainer.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--entitygraph", default="{}",
                        help="JSON object of EntityGraph's parameters (default: its defaults)")
    args = parser.parse_args()
    try:
        eg_params = json.loads(args.entitygraph)
    except ValueError as exc:
        parser.error(f"--entitygraph is not JSON: {exc}")
    if not isinstance(eg_params, dict):
        parser.error("--entitygraph must be a JSON object")
    data = load("ml100k", False)
    means: dict[str, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        sc = build_scenario(data, replace(scenario_config("ml100k", None, 0, None, 5),
                                          seed=seed))
        em = EMCDR()
        em._index(sc)
        su, si = em._pairs(sc, sc.sources)
        tu, ti = em._pairs(sc, sc.target)
        n = len(em.u_row)
        Us, _ = softmax_mf(su, si, n, len(em.source_items), dim=64, epochs=30, seed=seed)
        Ut, Vt = softmax_mf(tu, ti, n, len(em.target_items), dim=64, epochs=30, seed=seed + 1)
        has_s = torch.zeros(n, dtype=torch.bool)
        has_s[su] = True
        has_t = torch.zeros(n, dtype=torch.bool)
        has_t[tu] = True
        both = torch.nonzero(has_s & has_t).squeeze(1)
        eg = EntityGraphScorer(**eg_params)
        eg.fit(sc, seed)
        target = set(em.target_items)
        users = sorted(em.u_row, key=em.u_row.__getitem__)
        u = eg.index.users
        mekbs = [eg.index.mekb_excluding(x, {i for i in u[x].items if i in target})
                 if x in u else eg.index.mekb(x) for x in users]
        from trainer.entitygraph.data import pad
        with torch.no_grad():
            x_eg = eg.model.encode_rows(*pad(mekbs))
        x_mf = Us.weight.detach()
        inputs = {"source-mf": x_mf, "entitygraph": x_eg, "both": torch.cat([x_mf, x_eg], 1)}
        ut = Ut.weight.detach()
        for name, x in inputs.items():
            mapping = fit_mapping(x[both], ut[both], seed=seed, epochs=200)
            with torch.no_grad():
                mapped = mapping(x)
            U = torch.where(has_t.unsqueeze(1), ut, mapped)
            m = evaluate(_Fixed(name, em.u_row, U, Vt.weight.detach()), sc, seed=seed,
                         split="valid")
            zs = (m["zero-shot"]["HR@10"], m["zero-shot"]["NDCG@10"])
            means.setdefault(name, []).append(zs)
            print(json.dumps({"input": name, "seed": seed, "zero-shot": [round(v, 4)
                                                                          for v in zs]}),
                  flush=True)
    print(f"validation zero-shot HR@10 / NDCG@10, mean over seeds {args.seeds}:")
    for name, zs in means.items():
        print(f"  {name}: {statistics.mean(h for h, _ in zs):.3f} / "
              f"{statistics.mean(n for _, n in zs):.3f}")


if __name__ == "__main__":
    main()
