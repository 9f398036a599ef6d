"""Batch vs stream parity: the same examples trained as shuffled offline epochs and as
the stream delivers them (two partitions interleaved, micro-batches as they arrive, a
restart from the checkpoint halfway) reach the same held-out quality within the
spread over seeds, and both clearly beat the untrained model."""

from __future__ import annotations

import json
import random
import statistics
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.test_online_loop import Harness, make_settings, tiny_encoder  # noqa: F401
from trainer.online.examples import Example, parse_example
from trainer.online.gate import Scorer, build_eval_set, evaluate
from trainer.online.holdout import is_held_out
from trainer.online.loop import Record
from trainer.online.scorers import TorchScorer

pytestmark = pytest.mark.slow

TASTES = [
    ["Apollo program", "NASA", "Mars", "rocket"],
    ["pasta", "olive oil", "kitchen", "Italian cuisine"],
    ["jazz", "Miles Davis", "saxophone", "blues"],
    ["football", "World Cup", "stadium", "goal"],
]
HOLDOUT = 0.25
N = 96
EPOCHS = 2


def world(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(N):
        # random arrival order (as shuffled as an offline epoch), skewed tastes (so
        # popularity is a baseline with some signal)
        taste = rng.choices(range(len(TASTES)), weights=[4, 3, 2, 1])[0]
        titles = rng.sample(TASTES[taste], 3)
        out.append(json.dumps({
            "v": 1, "example_id": f"p{seed}-{i}", "user_id": f"u{i}", "ts": float(i),
            "domain": "action", "item_id": f"t{taste}-{rng.randrange(2)}", "mekb_version": 1,
            "entities": [{"id": f"kb:{t}", "title": t, "score": 1.0} for t in titles],
        }).encode())
    return out


class Popularity(Scorer):
    """Every user gets the same ranking: items by training frequency."""

    def __init__(self, item_ids: list[str], train: list[Example]) -> None:
        counts = Counter(e.item_id for e in train)
        self.item_ids = item_ids
        self.items = np.array([[counts[i] + 1e-3 * k] for k, i in enumerate(item_ids)],
                              dtype=np.float32)

    def user_embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        return np.ones((len(examples), 1), dtype=np.float32)


def quality(h: Harness, holdout: list[Example]) -> float:
    model = h.trainer.model
    evalset = build_eval_set(holdout, model.item_ids, model.item_domains, n_negatives=7)
    return evaluate(TorchScorer(model), evalset).ndcg10


def popularity(seed: int, item_ids: list[str]) -> float:
    examples = [parse_example(v) for v in world(seed)]
    holdout = [e for e in examples if is_held_out(e.example_id, HOLDOUT)]
    train = [e for e in examples if not is_held_out(e.example_id, HOLDOUT)]
    evalset = build_eval_set(holdout, item_ids, ["action"] * len(item_ids), n_negatives=7)
    return evaluate(Popularity(item_ids, train), evalset).ndcg10


def run(tmp: Path, encoder: str, seed: int, mode: str) -> tuple[float, float]:
    values = world(seed)
    holdout = [e for e in map(parse_example, values) if is_held_out(e.example_id, HOLDOUT)]
    settings = make_settings(tmp / f"{mode}-{seed}", encoder, trainer_holdout_fraction=HOLDOUT,
                             trainer_seed=seed)
    torch.manual_seed(seed)
    h = Harness(settings)
    # every item known up front, so both modes rank over the same table
    items = sorted({parse_example(v).item_id for v in values})
    h.trainer.add_items(items, ["action"] * len(items))
    h.trainer.startup()
    before = quality(h, holdout)
    if mode == "batch":
        train = [e for e in map(parse_example, values) if not is_held_out(e.example_id, HOLDOUT)]
        rng = random.Random(seed)
        for _ in range(EPOCHS):
            rng.shuffle(train)
            for i in range(0, len(train), 8):
                h.trainer.train_step(train[i:i + 8])
    else:
        # the stream: partition by user, delivered interleaved in polls of 5 records
        parts: dict[int, list[bytes]] = {0: [], 1: []}
        for v in values:
            parts[zlib.crc32(parse_example(v).user_id.encode()) % 2].append(v)
        for epoch in range(EPOCHS):
            recs = [Record(p, epoch * 1000 + k, v) for p in parts for k, v in
                    enumerate(parts[p])]
            recs.sort(key=lambda r: (r.offset % 1000, r.partition))
            for i in range(0, len(recs), 5):
                h.trainer.process(recs[i:i + 5], now=0.0)
            h.trainer.process([], now=0.0)
            if epoch == 0:  # crash-free restart from the checkpoint halfway
                h.trainer.checkpoint()
                h = Harness(settings)
    return before, quality(h, holdout)


def test_batch_and_stream_reach_the_same_quality(tmp_path: Path, tiny_encoder: str) -> None:  # noqa: F811
    seeds = [0, 1, 2]
    batch = [run(tmp_path, tiny_encoder, s, "batch") for s in seeds]
    stream = [run(tmp_path, tiny_encoder, s, "stream") for s in seeds]
    untrained = statistics.mean(b for b, _ in batch + stream)
    b = [q for _, q in batch]
    s = [q for _, q in stream]
    spread = max(statistics.pstdev(b), statistics.pstdev(s), 0.02)
    assert statistics.mean(b) > untrained + 0.1, (b, untrained)
    assert statistics.mean(s) > untrained + 0.1, (s, untrained)
    assert abs(statistics.mean(b) - statistics.mean(s)) <= 3 * spread, (b, s)
    # every held-out user is new (zero-shot): the streamed model beats popularity
    items = sorted({parse_example(v).item_id for v in world(0)} | {
        parse_example(v).item_id for seed in seeds for v in world(seed)})
    pop = [popularity(seed, items) for seed in seeds]
    assert statistics.mean(s) > statistics.mean(pop) + 0.05, (s, pop)
