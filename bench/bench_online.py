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

`--kinds` (issue 16): the continuous trainer of each model kind through the REAL path —
an embedded Tansu broker, the `training-examples` topic (MEKB_PARTITIONS partitions),
the trainer's own consumer loop (`trainer.online.service.run`: aiokafka fetches,
decoding, hold-out, entity rows, micro-batch steps with the kind's defaults, replay,
first publication, metrics, lag), built as `mekb trainer` builds it:

    OMP_NUM_THREADS=1 nice -n 5 python bench/bench_online.py --kinds [--repeat 3] \
        [--eg-examples 20000] [--embedme-examples 32] [--eg-replay N] [--eg-batch N]

The examples are produced before the trainer starts (a backlog: the trainer's own rate,
not the producer's). EntityGraph: 30 entities per example out of a 4 000-entity
vocabulary, MiniLM title vectors; a first pass of 2 000 examples gives every entity
its row (titles encoded once, batched) and the first version is published; the rate is
trained examples / wall time from the first poll after that pass to the end of the last
training call (the drain of a last partial batch, after an empty poll, included). EmbedMe
(MiniLM, 64 tokens, batch 16): the same from its first poll on. EntityGraph runs three times:
as configured (while behind the stream: replay deferred, then taken — the time that
takes after the backlog is printed — and catch-up steps of MEKB_TRAINER_CATCHUP_BATCH),
with steps of its batch size while behind, and with MEKB_TRAINER_REPLAY_DEFER_LAG=0
(replay at once, never behind).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
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


def kind_stream(n: int, seed: int, n_entities: int = 4000, per_example: int = 30,
                n_items: int = 500) -> list[tuple[bytes, bytes]]:
    """(key, value) training-examples records (docs/contracts.md), keyed by user."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ents = rng.sample(range(n_entities), per_example)
        user = f"u{i % 997}"
        value = {"v": 1, "example_id": f"b{seed}-{i}", "user_id": user, "ts": float(i),
                 "domain": "action", "item_id": f"i{rng.randrange(n_items)}",
                 "mekb_version": 1, "mekb_size": per_example,
                 "entities": [{"id": f"kb:e{e}", "title": f"entity {e}",
                               "score": 1.0 / per_example} for e in ents]}
        out.append((user.encode(), json.dumps(value).encode()))
    return out


def run_kind_through_broker(bootstrap: str, kind: str, warm: int, n: int, seed: int,
                            data_dir: Path, replay: int | None = None,
                            batch: int | None = None,
                            over: dict[str, int] | None = None) -> dict[str, float]:
    """One trainer of `kind` over warm + n records pre-produced into a fresh topic
    (`over`: settings that differ from the kind's defaults)."""
    import asyncio

    import torch
    from kafka import KafkaProducer
    from prometheus_client import CollectorRegistry

    from mekb.kafka_config import kafka_python_config
    from mekb.registry import Registry, registry_root
    from mekb.settings import Settings
    from mekb.topics import create_topics
    from trainer.online.checkpoint import CheckpointStore
    from trainer.online.kinds import checkpoint_dir, online_kind
    from trainer.online.loop import OnlineTrainer, model_config, state_dir
    from trainer.online.metrics import TrainerMetrics
    from trainer.online.resume import load_start
    from trainer.online.service import Health, run

    settings = Settings(
        bootstrap_servers=bootstrap, broker_flavor="tansu", data_dir=data_dir,
        # a topic of its own per run: variants of one kind and seed share neither records
        # nor a backlog
        topic_prefix=f"bench{seed}{kind[:2]}{uuid.uuid4().hex[:8]}.",
        model_kind=kind,  # type: ignore[arg-type]
        trainer_max_tokens=64, trainer_dim=64, trainer_publish_every=0,
        trainer_publish_interval_s=0,
        trainer_refit_interval_s=1e9, trainer_checkpoint_interval_s=1e9,
        trainer_holdout_fraction=0.05, trainer_replay=replay, trainer_batch_size=batch,
        **(over or {}))
    create_topics(settings)
    producer = KafkaProducer(**kafka_python_config(settings), linger_ms=5,
                             batch_size=256 * 1024)
    for key, value in kind_stream(warm, seed + 100) + kind_stream(n, seed):
        producer.send(settings.topic("training-examples"), key=key, value=value)
    producer.flush()
    producer.close()

    torch.manual_seed(settings.trainer_seed)
    k = online_kind(kind, settings)
    store = CheckpointStore(checkpoint_dir(state_dir(settings), kind))
    registry = Registry(registry_root(settings))
    start = load_start(settings, store, registry, model_config(settings), k)
    prom = CollectorRegistry()
    trainer = OnlineTrainer(settings, start.model, start.state, start.optimizer_state,
                            store, registry, TrainerMetrics(prom), kind=k)
    total = warm + n
    # per process() call that consumed or trained: (start, end, consumed before,
    # trained before, consumed after, trained after, process CPU time at start, at end,
    # examples replayed so far)
    marks: list[tuple[float, float, int, int, int, int, float, float, float]] = []
    process = trainer.process

    def timed(records: Any, now: float | None = None) -> Any:
        t0, c0, s0 = time.perf_counter(), sum(trainer.offsets.values()), \
            trainer.state.examples_seen
        cpu0 = time.process_time()
        out = process(records, now)
        if records or trainer.state.examples_seen > s0:
            marks.append((t0, time.perf_counter(), c0, s0, sum(trainer.offsets.values()),
                          trainer.state.examples_seen, cpu0, time.process_time(),
                          replayed()))
        return out

    trainer.process = timed  # type: ignore[method-assign]

    def replayed() -> float:
        return prom.get_sample_value("mekb_trainer_examples_total",
                                     {"outcome": "replayed"}) or 0.0

    # after each step on new examples (and its replay, if taken at once): (wall, CPU
    # time, examples trained, examples replayed)
    steps: list[tuple[float, float, int, float]] = []
    train_step = trainer.train_step

    def stepped(batch: Any) -> float:
        loss = train_step(batch)
        steps.append((time.perf_counter(), time.process_time(),
                      trainer.state.examples_seen, replayed()))
        return loss

    trainer.train_step = stepped  # type: ignore[method-assign]

    paid_at: list[float] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run(settings, trainer, Health(), stop))
        def all_trained() -> bool:  # (after the process() call that trained the last)
            held = prom.get_sample_value("mekb_trainer_examples_total",
                                         {"outcome": "held_out"}) or 0.0
            return bool(marks) and marks[-1][5] + held >= total

        while not all_trained() and not task.done():
            await asyncio.sleep(0.05)
        # the replay deferred while the backlog lasted is taken once it is gone
        while trainer.replay_owed and not task.done():
            await asyncio.sleep(0.05)
        paid_at.append(time.perf_counter())
        stop.set()
        await task

    asyncio.run(main())
    # from the first call after the warm-up records to the end of the step that trained
    # the last new example: fetch waits between calls included (the drain of the last
    # partial batch waits for an empty poll, POLL_MS: counted too), the owed replay
    # taken after it not (replay_paid_s)
    first = next(m for m in marks if m[2] >= warm)
    end_t, end_cpu, end_seen, end_replayed = steps[-1]
    trained, seconds = end_seen - first[3], end_t - first[0]
    inside = sum(min(m[1], end_t) - m[0] for m in marks if first[0] <= m[0] < end_t)
    return {"rate": trained / seconds, "trained": trained,
            # CPU seconds of this process (the trainer's threads; the broker is another
            # process): the rate the trainer would reach with its cores to itself
            "per_cpu_s": trained / (end_cpu - first[6]),
            "seconds": seconds, "batch": trainer.batch_size,
            "replay": trainer.replay, "threads": torch.get_num_threads(),
            # in process(): the rest is the consumer loop (fetch wait, lag, health)
            "in_process": inside / seconds,
            # from the last new example's step until every owed replay step was taken
            "replay_paid_s": paid_at[0] - end_t,
            # replayed within the measured window (at once: while within the defer lag)
            "replayed_in_window": end_replayed - next(
                (m[8] for m in reversed(marks) if m[0] < first[0]), 0.0),
            "replayed": prom.get_sample_value("mekb_trainer_examples_total",
                                              {"outcome": "replayed"}) or 0.0,
            "forgone": prom.get_sample_value("mekb_trainer_examples_total",
                                             {"outcome": "replay_forgone"}) or 0.0,
            # the one publication of the run (gate, checkpoint, export, publish, activate)
            "publish_s": prom.get_sample_value("mekb_trainer_publish_duration_seconds_sum",
                                               {"kind": "full"}) or 0.0}


def bench_kinds(args: argparse.Namespace) -> None:
    import os

    import torch

    from mekb.broker import EmbeddedBroker
    from trainer.online.kinds import EntityGraphOnline

    threads = torch.get_num_threads()
    # EntityGraph as configured (replay deferred and catch-up steps while behind), with
    # steps of its batch size while behind (MEKB_TRAINER_CATCHUP_BATCH = the batch),
    # replaying at once (MEKB_TRAINER_REPLAY_DEFER_LAG=0: never behind, the behaviour
    # before either) and EmbedMe
    batch = args.eg_batch or EntityGraphOnline.default_batch
    variants: dict[str, dict[str, int]] = {
        "entitygraph": {}, "entitygraph-no-catchup": {"trainer_catchup_batch": batch},
        "entitygraph-replay-at-once": {"trainer_replay_defer_lag": 0}, "embedme": {}}
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with EmbeddedBroker() as broker:
        for seed in range(args.repeat):  # variants interleaved: the same load for all
            for label, over in variants.items():
                kind = label.split("-")[0]
                torch.set_num_threads(threads)  # a kind may set its own (torch_threads)
                warm, n = (2000, args.eg_examples) if kind == "entitygraph" else \
                    (0, args.embedme_examples)
                with tempfile.TemporaryDirectory() as tmp:
                    r = run_kind_through_broker(
                        broker.bootstrap_servers, kind, warm, n, seed, Path(tmp),
                        *((args.eg_replay, args.eg_batch, over)
                          if kind == "entitygraph" else ()))
                results[label].append(r)
                print(f"  run {seed} {label}: {r['rate']:.1f} examples/s, "
                      f"{r['per_cpu_s']:.0f} per CPU-second ({r['trained']:.0f} "
                      f"in {r['seconds']:.1f} s, {r['in_process']:.0%} of it in process(); "
                      f"{r['replayed']:.0f} replayed ({r['replayed_in_window']:.0f} of them "
                      f"in the measured window), {r['forgone']:.0f} forgone, owed "
                      f"replay taken {r['replay_paid_s']:.1f} s after the backlog; "
                      f"load {os.getloadavg()[0]:.1f}; first publication "
                      f"{r['publish_s']:.1f} s)", flush=True)
    med = {k: statistics.median(r["rate"] for r in v) for k, v in results.items()}
    for label, runs in results.items():
        r = runs[0]
        rates = ", ".join(f"{x['rate']:.1f}" for x in runs)
        cpu = statistics.median(x["per_cpu_s"] for x in runs)
        print(f"continuous trainer {label} through the broker: {med[label]:.1f} examples/s "
              f"(median of {len(runs)}: {rates}), {cpu:.0f} per CPU-second; batch "
              f"{r['batch']:.0f}, replay {r['replay']:.0f}, torch threads {r['threads']:.0f}")
    print(f"EntityGraph / EmbedMe: {med['entitygraph'] / med['embedme']:.0f}x; catch-up "
          f"steps / steps of the batch: {med['entitygraph'] / med['entitygraph-no-catchup']:.2f}x;"
          f" deferred / at-once replay: "
          f"{med['entitygraph'] / med['entitygraph-replay-at-once']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--freeze-layers", type=int, nargs="+", default=[0],
                        help="MEKB_TRAINER_FREEZE_LAYERS values to compare")
    parser.add_argument("--kinds", action="store_true",
                        help="EntityGraph vs EmbedMe through the real broker (issue 16)")
    parser.add_argument("--eg-examples", type=int, default=20000)
    parser.add_argument("--embedme-examples", type=int, default=32)
    parser.add_argument("--eg-replay", type=int, default=None,
                        help="MEKB_TRAINER_REPLAY for EntityGraph (default: the kind's, 3)")
    parser.add_argument("--eg-batch", type=int, default=None,
                        help="MEKB_TRAINER_BATCH_SIZE for EntityGraph (default: the kind's, 256)")
    args = parser.parse_args()
    if args.kinds:
        from mekb.logs import configure_logging

        configure_logging("WARNING", False)
        bench_kinds(args)
        return
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
