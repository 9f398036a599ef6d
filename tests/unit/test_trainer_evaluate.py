"""The evaluation harness (HR@10/NDCG@10, sampled and full ranking, buckets, seeds)
and the ID baselines on a tiny synthetic world."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from trainer.baselines.mf import CMF, EMCDR
from trainer.baselines.popularity import Popularity
from trainer.baselines.youtubednn import YoutubeDNN
from trainer.data.scenario import Scenario, ScenarioConfig, build_scenario
from trainer.data.synthetic import WorldConfig, generate_world
from trainer.evaluate import RunRecord, evaluate, markdown_tables, run_experiment


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    world = generate_world(WorldConfig(users=120, items_per_domain=60, seed=2))
    return build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=2))


class Oracle:
    """Scores each user's test positives highest: HR = NDCG = 1."""

    name = "oracle"

    def fit(self, scenario: Scenario, seed: int) -> None:
        self.items = scenario.target_items()
        self.pos: dict[str, set[str]] = {}
        for r in scenario.test:
            self.pos.setdefault(r.user_id, set()).add(r.item_id)

    def score(self, users: Sequence[str]) -> np.ndarray:
        return np.array([[1.0 if i in self.pos.get(u, ()) else 0.0 for i in self.items]
                         for u in users])


class Constant:
    name = "constant"

    def fit(self, scenario: Scenario, seed: int) -> None:
        self.n = len(scenario.target_items())

    def score(self, users: Sequence[str]) -> np.ndarray:
        return np.zeros((len(users), self.n))


def test_oracle_and_constant(scenario: Scenario) -> None:
    oracle = Oracle()
    oracle.fit(scenario, 0)
    res = evaluate(oracle, scenario, seed=0, n_negatives=20)
    # several positives of one user tie at the top... but each positive's competitors
    # exclude the user's other positives, so the oracle always ranks first
    assert res["all"]["HR@10"] == 1.0 and res["all"]["NDCG@10"] == 1.0
    assert res["all"]["n"] == len(scenario.test)
    assert sum(v["n"] for k, v in res.items() if k != "all") == res["all"]["n"]
    const = Constant()
    const.fit(scenario, 0)
    res = evaluate(const, scenario, seed=0, n_negatives=20)
    # ties count half: with 20 negatives every positive gets rank 10 → never a hit
    assert res["all"]["HR@10"] == 0.0
    full = res["all"]["HR@10_full"]
    assert full == 0.0  # ~58 candidates: rank ≈ 29


def test_ndcg_formula(scenario: Scenario) -> None:
    class Second(Oracle):
        def score(self, users: Sequence[str]) -> np.ndarray:
            s = super().score(users)
            s[:, 0] = 2.0  # one item above every positive (unless it is one)
            return s

    m = Second()
    m.fit(scenario, 0)
    res = evaluate(m, scenario, seed=0, n_negatives=10_000)
    assert res["all"]["HR@10_full"] == 1.0
    assert 1 / math.log2(3) <= res["all"]["NDCG@10_full"] <= 1.0


@pytest.mark.parametrize("cls", [Popularity, YoutubeDNN, EMCDR, CMF])
def test_baselines_fit_and_score(cls, scenario: Scenario) -> None:
    method = cls() if cls is Popularity else cls(dim=8, epochs=2)
    method.fit(scenario, 0)
    users = sorted({r.user_id for r in scenario.test})[:5]
    scores = method.score(users)
    assert scores.shape == (5, len(scenario.target_items()))
    assert np.isfinite(scores).all()


def test_run_experiment_resumes_and_tables(tmp_path) -> None:
    world = generate_world(WorldConfig(users=80, items_per_domain=30, seed=4))
    out = tmp_path / "runs.jsonl"
    cfg = ScenarioConfig("books", "movies", min_item_positives=2)
    recs = run_experiment(world, cfg, {"Popularity": Popularity}, (0, 1), out_jsonl=out)
    assert [(r.method, r.seed) for r in recs] == [("Popularity", 0), ("Popularity", 1)]
    again = run_experiment(world, cfg, {"Popularity": Popularity}, (0, 1, 2), out_jsonl=out)
    assert len(out.read_text().splitlines()) == 3 and len(again) == 3
    table = markdown_tables(again)
    assert "| Popularity | 3 |" in table and "zero-shot HR@10" in table
    assert all(isinstance(r, RunRecord) for r in again)


def _hand_scenario(n_target: int) -> Scenario:
    """One user: t000 trained on, t001 and t002 in test; target items t000, t001, ...
    (zero-padded: column j of the scores is item j)."""
    from trainer.data.base import Interaction, Item

    items = {f"t{i:03d}": Item(f"t{i:03d}", "tgt", f"T{i}") for i in range(n_target)}
    items["s0"] = Item("s0", "src", "S0")
    train = [Interaction("u", "t000", "tgt", 5.0), Interaction("u", "s0", "src", 5.0)]
    test = [Interaction("u", "t001", "tgt", 5.0), Interaction("u", "t002", "tgt", 5.0)]
    return Scenario(ScenarioConfig("src", "tgt"), items, {i: [] for i in items}, train, [],
                    test, set(), {"u": "few-shot"})


class Fixed:
    name = "fixed"

    def __init__(self, row: list[float]) -> None:
        self.row = np.array(row)

    def fit(self, scenario: Scenario, seed: int) -> None: ...

    def score(self, users: Sequence[str]) -> np.ndarray:
        return np.tile(self.row, (len(users), 1))


def test_filtered_mrr_and_hit100_by_hand() -> None:
    sc = _hand_scenario(5)
    # t0 (trained) and the other test positive are filtered out of each ranking:
    # t1 (3.0) is beaten by t3 (4.0) only -> rank 1; t2 (1.0) by t3 and t4 -> rank 2
    res = evaluate(Fixed([5.0, 3.0, 1.0, 4.0, 2.0]), sc, n_negatives=999)["all"]
    assert res["MRR"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert res["Hit@100"] == 1.0 and res["HR@10_full"] == 1.0
    assert res["NDCG@10_full"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    # ties count half: a constant scorer ranks each positive at 0.5 × 2 competitors
    res = evaluate(Fixed([0.0] * 5), sc)["all"]
    assert res["MRR"] == pytest.approx(1 / 2)
    # Hit@100: 150 items, t1 last of 147 candidates (rank 147), t2 first (rank 0)
    sc = _hand_scenario(150)
    row = [1.0] * 150
    row[1], row[2] = 0.0, 2.0
    res = evaluate(Fixed(row), sc)["all"]
    assert res["Hit@100"] == 0.5
    assert res["MRR"] == pytest.approx((1 / 148 + 1.0) / 2)


def test_configurations_budget() -> None:
    from trainer.evaluate import configurations

    space = {"b": [1, 2, 3], "a": [0.1, 0.2]}
    four = configurations(space, 4, seed=0)
    assert four[0] == {"a": 0.1, "b": 1} and len(four) == 4
    assert len({tuple(sorted(c.items())) for c in four}) == 4
    assert four == configurations(space, 4, seed=0)
    assert len(configurations(space, 100, seed=0)) == 6  # the whole grid
    assert configurations({}, 4, seed=0) == [{}]


class Knob:
    """Scores the test positives first iff knob == 2 (so validation must pick 2)."""

    name = "knob"
    search_space = {"knob": [1, 2, 3]}

    def __init__(self, knob: int = 1) -> None:
        self.knob = knob

    def fit(self, scenario: Scenario, seed: int) -> None:
        self.items = scenario.target_items()
        self.pos: dict[str, set[str]] = {}
        for r in scenario.valid + scenario.test:
            self.pos.setdefault(r.user_id, set()).add(r.item_id)

    def score(self, users: Sequence[str]) -> np.ndarray:
        good = self.knob == 2
        return np.array([[float(good and i in self.pos.get(u, ())) for i in self.items]
                         for u in users])


def test_tuning_on_validation_and_multidomain(tmp_path) -> None:
    world = generate_world(WorldConfig(users=90, items_per_domain=24, seed=5,
                                       domains=("books", "movies", "games")))  # type: ignore[arg-type]
    out = tmp_path / "runs.jsonl"
    cfg = ScenarioConfig("books", "movies", min_item_positives=2)
    recs = run_experiment(world, cfg, {"knob": Knob}, (0,), tune_budget=3, out_jsonl=out,
                          protocol="multidomain", criterion="zero-shot:MRR")
    assert sorted(r.target for r in recs) == ["books", "games", "movies"]
    for r in recs:
        assert r.params == {"knob": 2} and len(r.trials) == 3 and r.protocol == "multidomain"
        assert r.metrics["zero-shot"]["MRR"] == 1.0
        assert r.valid["zero-shot"]["MRR"] == 1.0
        assert [t["zero-shot:MRR"] < 1.0 for t in r.trials] == [True, False, True]
    from trainer.evaluate import markdown_multidomain

    table = markdown_multidomain(recs)
    assert "| knob | 1.0000 ± 0.0000 |" in table and 'knob: books seed 0: {"knob": 2}' in table
    # resumed from the JSON lines: nothing refitted
    again = run_experiment(world, cfg, {"knob": Knob}, (0,), tune_budget=3, out_jsonl=out,
                           protocol="multidomain")
    assert len(again) == 3 and len(out.read_text().splitlines()) == 3


def test_cli_multidomain_protocol_and_errors(tmp_path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mekb.cli.main", "evaluate", *args],
                              capture_output=True, text=True, timeout=300)

    md = tmp_path / "md.md"
    ok = cli("--dataset", "synthetic:kg-only", "--protocol", "multidomain", "--methods",
             "popularity,cmf", "--id-epochs", "2", "--seeds", "0", "--tune-budget", "2",
             "--markdown", str(md), "--out", str(tmp_path / "md.jsonl"))
    assert ok.returncode == 0, ok.stderr
    table = md.read_text()
    assert "| method | books MRR | books Hit@100 | movies MRR |" in table
    assert "| CMF |" in table and "- CMF: books seed 0: {" in table
    for args, needle in ((("--protocol", "nope"), "--protocol"),
                         (("--methods", "nope"), "unknown method"),
                         (("--tune-criterion", "HR@10"), "BUCKET:METRIC"),
                         (("--protocol", "multidomain", "--domains", "books"), "--domains")):
        bad = cli("--dataset", "synthetic", "--seeds", "0", *args)
        assert bad.returncode == 1 and bad.stderr.startswith("mekb: error:"), bad.stderr
        assert needle in bad.stderr and "Traceback" not in bad.stderr
