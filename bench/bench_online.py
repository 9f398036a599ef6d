"""Continuous trainer throughput, in-process (the broker is not the bottleneck: aiokafka
consumes >100 k records/s here, the encoder a few dozen examples/s).

    nice -n 10 python bench/bench_online.py [--examples 256] [--max-tokens 32 128] \
        [--batch 16] [--repeat 3]

Per max_tokens, on the real MiniLM encoder (CPU profile: whatever torch threads the
machine gives), with the trainer's own code path (`OnlineTrainer.process`: parsing,
hold-out, item growth, micro-batch steps with the configured optimiser):
1. baseline: forward-only encoding of the same texts in the same batches (no grad) —
   the floor a training step cannot beat;
2. fine-tuning rate = trained examples / wall time of `process` over the stream;
3. publication = gate (candidate vs active on the held-out slice, ONNX for the active)
   + save weights + ONNX export + registry publish + activate, wall time;
4. item-tower refit over the recent window (ONNX user embeddings + softmax fit), wall
   time, and the refit's loss before → after.
Medians of --repeat runs; the fine-tuning rate is also reported as a ratio of the
forward-only rate measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = (
    "Apollo program", "NASA", "Mars", "Christopher Nolan", "Inception", "Batman",
    "Italian cuisine", "Pasta", "Olive oil", "Jazz", "Miles Davis", "Paris", "Football",
    "Chess", "Tolkien", "Dune", "Quantum mechanics", "Beethoven", "Impressionism", "Kyoto",
)


def make_stream(n: int, n_items: int, seed: int) -> list[Any]:
    from trainer.online.loop import Record

    rng = random.Random(seed)
    out = []
    for i in range(n):
        titles = rng.sample(WORDS, 12)
        value = {"v": 1, "example_id": f"b{seed}-{i}", "user_id": f"u{i % 97}", "ts": float(i),
                 "domain": "action", "item_id": f"i{rng.randrange(n_items)}",
                 "mekb_version": 1,
                 "entities": [{"id": f"kb:{t}", "title": t, "score": 1.0} for t in titles]}
        out.append(Record(0, i, json.dumps(value).encode()))
    return out


def run_once(max_tokens: int, n: int, batch: int, seed: int,
             freeze: int = 0) -> dict[str, float]:
    import torch
    from prometheus_client import CollectorRegistry

    from mekb.registry import Registry
    from mekb.settings import Settings
    from trainer.online.checkpoint import CheckpointStore
    from trainer.online.examples import parse_example
    from trainer.online.loop import OnlineTrainer, model_config, state_dir
    from trainer.online.metrics import TrainerMetrics
    from trainer.online.resume import load_start

    tmp = Path(tempfile.mkdtemp(prefix="bench-online-"))
    settings = Settings(
        data_dir=tmp, trainer_max_tokens=max_tokens, trainer_batch_size=batch,
        trainer_publish_every=0, trainer_publish_interval_s=0,
        trainer_refit_interval_s=1e9, trainer_checkpoint_interval_s=1e9,
        trainer_holdout_fraction=0.1, trainer_gate_min_examples=1,
        trainer_gate_negatives=99, trainer_freeze_layers=freeze,
    )
    torch.manual_seed(seed)
    store = CheckpointStore(state_dir(settings) / "checkpoints")
    registry = Registry(tmp / "registry")
    start = load_start(settings, store, registry, model_config(settings))
    trainer = OnlineTrainer(settings, start.model, start.state, None, store, registry,
                            TrainerMetrics(CollectorRegistry()))
    t0 = time.perf_counter()
    trainer.startup()  # initial version: checkpoint + export + publish of the pretrained model
    initial_s = time.perf_counter() - t0
    stream = make_stream(n, n_items=200, seed=seed)

    # baseline: forward-only over the same texts and batch size
    model = trainer.model
    texts = [parse_example(r.value).text(max_tokens) for r in stream]
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            model.encode_texts(texts[i:i + batch])
    forward_rate = len(texts) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for i in range(0, len(stream), batch * 4):
        trainer.process(stream[i:i + batch * 4], now=0.0)
    trainer.process([], now=0.0)
    train_s = time.perf_counter() - t0
    trained = trainer.state.examples_seen
    t0 = time.perf_counter()
    trainer.publish_full(time.time())
    publish_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mv = trainer.refit(time.time())
    refit_s = time.perf_counter() - t0
    metrics = mv.manifest.get("metrics", {}) if mv is not None else {}
    return {
        "forward_rate": forward_rate,
        "train_rate": trained / train_s,
        "initial_publish_s": initial_s,
        "publish_s": publish_s,
        "refit_s": refit_s,
        "refit_examples": float(metrics.get("refit_examples", 0.0)),
        "refit_loss_before": float(metrics.get("refit_loss_before", float("nan"))),
        "refit_loss_after": float(metrics.get("refit_loss_after", float("nan"))),
        "held_out": float(len(trainer.holdout)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--freeze-layers", type=int, nargs="+", default=[0],
                        help="MEKB_TRAINER_FREEZE_LAYERS values to compare")
    args = parser.parse_args()
    import torch

    from mekb.logs import configure_logging

    configure_logging("WARNING", False)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"examples {args.examples}, batch {args.batch}, repeat {args.repeat}")
    for max_tokens in args.max_tokens:
        for freeze in args.freeze_layers:
            runs = [run_once(max_tokens, args.examples, args.batch, seed, freeze)
                    for seed in range(args.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"max_tokens {max_tokens}, freeze {freeze}: fine-tuning "
                  f"{med['train_rate']:.1f} examples/s (forward-only "
                  f"{med['forward_rate']:.1f}/s, ratio "
                  f"{med['train_rate'] / med['forward_rate']:.2f}); initial publish "
                  f"{med['initial_publish_s']:.1f} s; gated publish {med['publish_s']:.1f} s; "
                  f"refit {med['refit_s']:.1f} s over {med['refit_examples']:.0f} examples "
                  f"(loss {med['refit_loss_before']:.3f} -> {med['refit_loss_after']:.3f})")

if __name__ == "__main__":
    main()
