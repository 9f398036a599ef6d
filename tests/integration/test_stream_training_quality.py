"""The acceptance criterion of the streaming path, end to end through real processes: the
synthetic cross-domain world (trainer/data/synthetic.py, books -> movies) is replayed into
the real broker (every item, then the scenario's training interactions of both domains in
time order; entity words written as names so the dictionary linker links them), a real
`mekb worker` links the items with a real alias table of the world's entities (checked:
exactly the world's entities per item) and turns the interactions into MeKBs and movies
training examples, a real `mekb trainer` (tiny random BERT) fine-tunes on them in one
pass and publishes to the registry; the published bundle, scored the way serving scores
it (ONNX user tower + items.npy), ranks the zero-shot users' held-out movies better than
item popularity does: HR@10 over the same sampled candidate lists, with the users' MeKBs
exactly as the worker published them.

Twice: EmbedMe (tiny random BERT) on a focused world, and EntityGraph (issue 16: the
kind `mekb up` runs) on the DEFAULT synthetic world, trained on the examples of both
domains (the second paper's multi-domain training: zero-shot users' entities learn
from their own books)."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from mekb.registry import Registry
from mekb.settings import Settings
from tests.integration.streams_helpers import Worker, latest_mekbs, produce, read_topic
from tests.integration.test_trainer_process import (  # noqa: F401 (fixture)
    Trainer,
    tsettings,
    wait_for,
)
from tests.unit.test_online_loop import tiny_encoder  # noqa: F401 (fixture)
from trainer.data.scenario import Scenario, ScenarioConfig, build_scenario
from trainer.data.synthetic import TOPICS, WorldConfig, generate_world
from trainer.online.examples import Example
from trainer.online.gate import Scorer, Scores, build_eval_set, evaluate
from trainer.online.kinds import checkpoint_dir
from trainer.online.scorers import BundleScorer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE, TARGET = "books", "movies"
NEGATIVES = 50
# Margin over popularity (absolute HR@10): five runs gave 0.483-0.527 against 0.372
# (n = 1036); a learning rate of 3e-3 instead of 1e-3 gave 0.348, below popularity.
MARGIN = 0.05
# EntityGraph on the default world (see its test): small steps, as the stream is short.
# Its HR@10 varies from run to run with the trainer's timing (poll sizes set the batch
# boundaries, the arrival order of two partitions the item rows, catch-up steps the step
# count): 24 runs of this test on 2026-11-30 (16 with the defaults, five of them with a
# busy loop on one core; 8 with MEKB_TRAINER_REPLAY_DEFER_LAG=0) gave 0.346-0.442, mean
# 0.397, s.d. 0.023, against popularity's 0.332 (n = 410); NDCG@10 0.186-0.232 (mean
# 0.209, s.d. 0.012) against 0.167. A margin of 0.03 (chosen from 11 earlier runs,
# 0.368-0.420) failed one CI run at 0.3585. The check is the issue's: the model beats
# popularity, on both measures; a model that learnt only popularity (or nothing) does not.
EG_BATCH = "32"


def scenario() -> Scenario:
    # Focused users (few topics each, little noise): what a user read says what they will
    # watch, so zero-shot transfer has something to find (with the default interest_alpha
    # 0.25 and noise 0.15, even an oracle scoring movies by entity overlap with the
    # user's books is within 0.02 HR@10 of popularity). 1200 users: ~4 700 movies
    # examples for one online pass and ~1 000 zero-shot test records.
    world = generate_world(WorldConfig(users=1200, interest_alpha=0.1, noise=0.05, seed=0))
    return build_scenario(world, ScenarioConfig(SOURCE, TARGET, min_item_positives=5, seed=0))


@pytest.fixture
def alias(tmp_path: Path) -> Path:
    """A real alias table of the world's entities: mention = title, one candidate."""
    from linker.alias_table import AliasTable

    path = tmp_path / "alias"
    words = sorted({w for ws in TOPICS.values() for w in ws})
    AliasTable.build(path, [(w, w, 10) for w in words]).close()
    return path


def as_names(text: str, titles: Sequence[str]) -> str:
    """The world's entity words written as names ("rocket" -> "Rocket"): the dictionary
    linker leaves lowercase common nouns of cased running text unlinked by design."""
    for title in sorted(titles, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(title)}\b", title.title(), text)
    return text


def item_pairs(sc: Scenario) -> list[tuple[bytes, bytes]]:
    pairs = []
    for it in sc.items.values():
        titles = [e.title for e in sc.entities[it.item_id]]
        pairs.append((it.item_id.encode(), json.dumps({
            "v": 1, "item_id": it.item_id, "domain": it.domain,
            "title": as_names(it.title, titles), "text": as_names(it.text, titles),
            "ts": 1_500_000_000.0,
        }).encode()))
    return pairs


def interaction_pairs(sc: Scenario) -> list[tuple[bytes, bytes]]:
    return [(r.user_id.encode(), json.dumps({
        "v": 1, "event_id": f"{r.user_id}:{r.item_id}", "user_id": r.user_id,
        "item_id": r.item_id, "domain": r.domain, "action": "rating", "ts": r.ts,
        "rating": r.rating,
    }).encode()) for r in sorted(sc.train, key=lambda r: r.ts)]


class Popularity(Scorer):
    """Training frequency of each item in the target domain; ties broken at random."""

    def __init__(self, sc: Scenario) -> None:
        counts = Counter(r.item_id for r in sc.train if r.domain == TARGET)
        self.item_ids = sc.target_items()
        jitter = np.random.default_rng(0).uniform(0.0, 0.5, len(self.item_ids))
        self.items = np.array([[counts.get(i, 0) + j] for i, j in
                               zip(self.item_ids, jitter, strict=True)], dtype=np.float32)

    def user_embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        return np.ones((len(examples), 1), dtype=np.float32)


def stream_and_publish(settings: Settings, sc: Scenario, alias: Path, tmp_path: Path,
                       **trainer_env: str) -> tuple[Registry, dict, int]:
    """Replay the world through a real worker into a real trainer until a version
    trained on every example is active; (registry, final MeKBs, examples)."""
    targets = set(settings.target_domains.split(","))
    target_train = [r for r in sc.train if r.domain in targets]
    per_user = Counter(r.user_id for r in sc.train)
    trainer = Trainer(settings, tmp_path / "trainer.log", **trainer_env)
    worker = Worker(settings, alias, "w1", tmp_path / "worker.log")
    registry = Registry(settings.data_dir / "registry")
    try:
        trainer.wait_healthy()
        worker.wait_ready()
        produce(settings, "items", item_pairs(sc))
        worker.wait_items(len(sc.items))
        # the real linker finds exactly the world's entities of every item
        linked = {}
        for rec in read_topic(settings, "item-entities"):
            value = json.loads(rec.value)
            linked[value["item_id"]] = {e[0] for e in value["entities"]
                                        if e[0].startswith("kb:")}
        assert linked == {i: {e.entity_id for e in ents} for i, ents in sc.entities.items()}
        produce(settings, "interactions", interaction_pairs(sc))

        # the worker: one example per target-domain training record, every MeKB final
        def worker_done() -> bool:
            mekbs = latest_mekbs(settings)
            return len(mekbs) == len(per_user) and all(
                mekbs[u]["version"] == n for u, n in per_user.items())

        wait_for(worker_done, 180, "the worker's MeKBs", trainer)
        examples = {json.loads(r.value)["example_id"] for r in
                    read_topic(settings, "training-examples")}
        assert len(examples) == len(target_train)

        # the trainer: every example consumed, and a version published after the last one
        def trained_and_published() -> bool:
            root = checkpoint_dir(settings.data_dir / "trainer", trainer_env["MEKB_MODEL_KIND"])
            if not (root / "LATEST").is_file():
                return False
            state = json.loads((root / (root / "LATEST").read_text().strip() / "state.json"
                                ).read_text())
            active = registry.active()
            return (sum(state["offsets"].values()) >= len(target_train)
                    and not state["extra"].get("publishing") and active is not None
                    and sum(active.manifest.get("training_offsets", {}).values())
                    >= len(target_train))

        wait_for(trained_and_published, 240, "the final publication", trainer)
        active = registry.active()
        assert active is not None and active.kind == "full"
    finally:
        assert worker.stop() == 0
        assert trainer.stop() == 0, trainer.tail()
    return registry, latest_mekbs(settings), len(target_train)


def zero_shot_scores(sc: Scenario, mekbs: dict, active_path: Path) -> tuple[Scores, Scores]:
    """(published model, popularity) on the zero-shot users' held-out movies."""
    zero_shot = [r for r in sc.test if r.user_id in sc.held_out_users]
    # zero-shot users: no movies record in training, MeKB from their books only
    assert all(e["id"].startswith(("kb:", "product:b")) for u in sc.held_out_users
               if u in mekbs for e in mekbs[u]["entities"])
    evals = []
    for r in zero_shot:
        ents = mekbs.get(r.user_id, {}).get("entities", [])
        evals.append(Example(f"test:{r.user_id}:{r.item_id}", r.user_id, TARGET, r.item_id,
                             r.ts, tuple(e["title"] for e in ents), len(ents),
                             tuple(e["id"] for e in ents),
                             tuple(float(e["score"]) for e in ents)))
    targets = sc.target_items()
    evalset = build_eval_set(evals, targets, [TARGET] * len(targets), NEGATIVES)
    assert len(evalset.examples) == len(zero_shot)
    return evaluate(BundleScorer(active_path), evalset), evaluate(Popularity(sc), evalset)


def test_published_model_beats_popularity_on_zero_shot_users(
    tsettings: Settings, alias: Path, tiny_encoder: str, tmp_path: Path  # noqa: F811
) -> None:
    started = time.monotonic()
    sc = scenario()
    settings = Settings(**{**tsettings.model_dump(), "target_domains": TARGET})
    movies_train = [r for r in sc.train if r.domain == TARGET]
    zero_shot = [r for r in sc.test if r.user_id in sc.held_out_users]
    assert len(zero_shot) >= 200 and not any(u in sc.held_out_users for u in
                                             {r.user_id for r in movies_train})
    # a tiny random BERT (seconds per pass), one pass over the stream; the gate lets every
    # candidate through, so the active version is the one trained on everything
    registry, mekbs, n = stream_and_publish(
        settings, sc, alias, tmp_path, MEKB_MODEL_KIND="embedme",
        MEKB_TRAINER_ENCODER=tiny_encoder, MEKB_TRAINER_DIM="32",
        MEKB_TRAINER_MAX_TOKENS="64", MEKB_TRAINER_BATCH_SIZE="8",
        MEKB_TRAINER_LR="1e-3", MEKB_TRAINER_ITEM_LR="5e-2",
        MEKB_TRAINER_PUBLISH_EVERY="0", MEKB_TRAINER_PUBLISH_INTERVAL_S="10",
        MEKB_TRAINER_HOLDOUT_FRACTION="0.1", MEKB_TRAINER_GATE_NEGATIVES=str(NEGATIVES))
    active = registry.active()
    assert active is not None and active.model_kind == "embedme"
    model, popularity = zero_shot_scores(sc, mekbs, active.path)
    print(f"\nzero-shot HR@10 model {model.hr10:.4f} (NDCG@10 {model.ndcg10:.4f}) vs "
          f"popularity {popularity.hr10:.4f} (NDCG@10 {popularity.ndcg10:.4f}), "
          f"n={model.n}, {n} examples, version {active.version}, "
          f"{time.monotonic() - started:.0f}s")
    assert model.hr10 > popularity.hr10 + MARGIN, (model, popularity)


def test_entitygraph_beats_popularity_on_the_default_world(
    tsettings: Settings, alias: Path, tmp_path: Path  # noqa: F811
) -> None:
    """EntityGraph, as `mekb up` runs it (MiniLM title vectors, the kind's replay and
    catch-up defaults) but with small steps (EG_BATCH), on the default synthetic world,
    one pass over the examples of both domains."""
    started = time.monotonic()
    sc = build_scenario(generate_world(WorldConfig(seed=0)),
                        ScenarioConfig(SOURCE, TARGET, min_item_positives=5, seed=0))
    settings = Settings(**{**tsettings.model_dump(), "target_domains": f"{SOURCE},{TARGET}"})
    registry, mekbs, n = stream_and_publish(
        settings, sc, alias, tmp_path, MEKB_MODEL_KIND="entitygraph", MEKB_TRAINER_DIM="64",
        MEKB_TRAINER_BATCH_SIZE=EG_BATCH, MEKB_TRAINER_PUBLISH_EVERY="0",
        MEKB_TRAINER_PUBLISH_INTERVAL_S="5", MEKB_TRAINER_HOLDOUT_FRACTION="0.1",
        MEKB_TRAINER_GATE_NEGATIVES=str(NEGATIVES))
    active = registry.active()
    assert active is not None and active.model_kind == "entitygraph"
    model, popularity = zero_shot_scores(sc, mekbs, active.path)
    print(f"\nEntityGraph zero-shot HR@10 {model.hr10:.4f} (NDCG@10 {model.ndcg10:.4f}) vs "
          f"popularity {popularity.hr10:.4f} (NDCG@10 {popularity.ndcg10:.4f}), "
          f"n={model.n}, {n} examples, version {active.version}, "
          f"{time.monotonic() - started:.0f}s")
    assert model.hr10 > popularity.hr10 and model.ndcg10 > popularity.ndcg10, \
        (model, popularity)
