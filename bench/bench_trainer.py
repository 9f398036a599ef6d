"""Trainer benchmarks (issue 5 targets).

1. Offline training throughput, examples/s ((user, positive) pairs per second), of
   `trainer.offline.train` vs a bare PyTorch loop over the same model and the same
   user batches (texts + positives built beforehand; the bare loop only tokenizes,
   runs forward/loss/backward/LAMB step). Runs are interleaved and repeated; the
   median ratio is reported (target >= 0.9).
2. User-tower latency, ONNX Runtime vs PyTorch eager, at batch 1 and 32 (target
   ONNX/eager <= 1.0), medians over repeated calls on the same inputs.
3. `--continuous`: the continuous trainer's rate (`OnlineTrainer.process`: parsing,
   hold-out, entity rows, micro-batch steps with each kind's defaults, replay included)
   in trained examples/s, EntityGraph (issue 16 target >= 5,000/s) vs EmbedMe in the same
   run, both with the real MiniLM; EntityGraph in steady state (its entities have rows:
   a first pass over the same entity vocabulary encoded their titles, reported apart).

    python bench/bench_trainer.py [--steps 6] [--repeat 3] [--max-tokens 64]
    python bench/bench_trainer.py --continuous [--repeat 3]
    python bench/bench_trainer.py --continuous --kg [--repeat 3]

`--kg`: EntityGraph's continuous rate with a knowledge graph tied (MEKB_TRAINER_KG_DIM 32,
a store of --kg-nodes nodes / --kg-triples random triples + the items' edges, TransE on
MEKB_TRAINER_KG_BATCH triples per step) vs without, interleaved in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _setup(max_tokens: int, freeze: int):
    from trainer.data.scenario import ScenarioConfig, build_scenario
    from trainer.data.synthetic import WorldConfig, generate_world
    from trainer.model import EmbedMe, EmbedMeConfig
    from trainer.offline import ensure_items

    world = generate_world(WorldConfig(users=400, seed=0))
    sc = build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=5))
    torch.manual_seed(0)
    model = EmbedMe(EmbedMeConfig(max_tokens=max_tokens))
    ensure_items(model, sc)
    model.freeze_lower_layers(freeze)
    return model, sc


def bench_training(args) -> dict:
    from trainer.losses import multi_positive_softmax
    from trainer.offline import TrainConfig, UserExamples, train
    from trainer.optim import make_optimizer

    model, sc = _setup(args.max_tokens, args.freeze_layers)
    cfg = TrainConfig(epochs=1, batch_users=args.batch_users, freeze_layers=args.freeze_layers,
                      progress=False, checkpoint_every=10**9)
    batches = list(UserExamples(sc, model, cfg).batches(0))[: args.steps]
    n_examples = sum(b.n_examples for b in batches)

    def bare() -> float:
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay, "lamb", cfg.item_lr)
        model.train()
        t0 = time.perf_counter()
        for b in batches:
            enc = model.tokenize(b.texts)
            logits = model(enc["input_ids"], enc["attention_mask"], sc.target)
            loss = multi_positive_softmax(logits, b.positives, b.pos_mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return n_examples / (time.perf_counter() - t0)

    def ours() -> float:
        result = train(model, sc, cfg, max_steps=args.steps)
        return result.examples / result.seconds

    ours_eps, bare_eps, ratios = [], [], []
    for _ in range(args.repeat):
        o, b = ours(), bare()
        ours_eps.append(o)
        bare_eps.append(b)
        ratios.append(o / b)
    return {"trainer_examples_per_s": statistics.median(ours_eps),
            "bare_examples_per_s": statistics.median(bare_eps),
            "ratio": statistics.median(ratios), "steps": args.steps,
            "batch_users": args.batch_users, "examples_per_run": n_examples}


def bench_latency(args) -> dict:
    import numpy as np
    import onnxruntime as ort

    from trainer.data.mekb import MeKBBuilder
    from trainer.export import export_user_tower

    model, sc = _setup(args.onnx_tokens, 0)
    model.eval()
    builder = MeKBBuilder(sc.entities, sc.train)
    users = sorted(builder.items_of)[:32]
    texts = [builder.text(u, args.onnx_tokens) for u in users]
    out: dict = {"seq_tokens": args.onnx_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user_tower.onnx"
        export_user_tower(model, path)
        opts = ort.SessionOptions()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for bs in (1, 32):
            enc = model.tokenize(texts[:bs])
            feeds = {k: v.numpy() for k, v in enc.items()}
            eager, onnx = [], []
            with torch.no_grad():
                for _ in range(3):  # warm-up
                    model.encode_users(**enc)
                    session.run(None, feeds)
                for _ in range(args.latency_repeat):
                    t0 = time.perf_counter()
                    model.encode_users(**enc)
                    eager.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    session.run(None, feeds)
                    onnx.append(time.perf_counter() - t0)
            e, o = statistics.median(eager), statistics.median(onnx)
            out[f"batch{bs}"] = {"eager_ms": e * 1e3, "onnx_ms": o * 1e3, "ratio": o / e,
                                 "seq": int(enc["input_ids"].shape[1])}
            _ = np.asarray(0)
    return out


def _online_stream(n: int, seed: int, n_entities: int = 4000, per_user: int = 30,
                   n_items: int = 500) -> list:
    import json
    import random

    from trainer.online.loop import Record

    rng = random.Random(seed)
    out = []
    for i in range(n):
        ents = rng.sample(range(n_entities), per_user)
        value = {"v": 1, "example_id": f"b{seed}-{i}", "user_id": f"u{i % 997}",
                 "ts": float(i), "domain": "action", "item_id": f"i{rng.randrange(n_items)}",
                 "mekb_version": 1, "mekb_size": per_user,
                 "entities": [{"id": f"kb:e{e}", "title": f"entity {e}",
                               "score": 1.0 / per_user} for e in ents]}
        out.append(Record(0, i, json.dumps(value).encode()))
    return out


def _online_trainer(kind: str, tmp: Path, **over):
    from prometheus_client import CollectorRegistry

    from mekb.registry import Registry
    from mekb.settings import Settings
    from trainer.online.checkpoint import CheckpointStore
    from trainer.online.kinds import checkpoint_dir, online_kind
    from trainer.online.loop import OnlineTrainer, model_config, state_dir
    from trainer.online.metrics import TrainerMetrics
    from trainer.online.resume import load_start

    settings = Settings(data_dir=tmp, model_kind=kind,  # type: ignore[arg-type]
                        trainer_max_tokens=64, trainer_dim=64,
                        trainer_publish_every=0, trainer_publish_interval_s=0,
                        trainer_refit_interval_s=1e9, trainer_checkpoint_interval_s=1e9,
                        trainer_holdout_fraction=0.05, **over)
    k = online_kind(kind, settings)
    store = CheckpointStore(checkpoint_dir(state_dir(settings), kind))
    start = load_start(settings, store, Registry(tmp / "registry"), model_config(settings), k)
    trainer = OnlineTrainer(settings, start.model, start.state, None, store,
                            Registry(tmp / "registry"), TrainerMetrics(CollectorRegistry()),
                            kind=k)
    # the registry already has a version: process() trains only (no publication)
    trainer.registry.active_version = lambda: "bench"  # type: ignore[method-assign]
    return trainer


def _feed(trainer, stream: list) -> float:
    poll = max(64, trainer.batch_size * 4)  # what trainer/online/service.py fetches
    before = trainer.state.examples_seen
    t0 = time.perf_counter()
    for i in range(0, len(stream), poll):
        trainer.process(stream[i:i + poll], now=0.0)
    trainer.process([], now=0.0)
    return (trainer.state.examples_seen - before) / (time.perf_counter() - t0)


def bench_continuous(args) -> dict:
    out: dict = {}
    threads = torch.get_num_threads()
    for kind, n in (("embedme", args.embedme_examples), ("entitygraph", args.eg_examples)):
        rates, first = [], []
        torch.set_num_threads(threads)  # a kind may set its own (OnlineKind.torch_threads)
        for seed in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(seed)
                trainer = _online_trainer(kind, Path(tmp))
                if kind == "entitygraph":  # every entity gets its row (title encoded once)
                    first.append(_feed(trainer, _online_stream(n, seed + 100)))
                rates.append(_feed(trainer, _online_stream(n, seed)))
        out[kind] = {"examples_per_s": statistics.median(rates), "examples": n,
                     "threads": torch.get_num_threads(),
                     "batch": trainer.batch_size, "replay": trainer.replay,
                     "first_pass_per_s": statistics.median(first) if first else None}
    return out


def _kg_inputs(tmp: Path, args, n_entities: int = 4000, n_items: int = 500):
    """A store (the stream's kb:e* entities among --kg-nodes nodes, --kg-triples random
    triples over 10 relations) and item-entities records (each item → 5 entities)."""
    import numpy as np

    from kg.graph import KnowledgeGraph
    from streams.catalog import LinkedItem

    rng = np.random.default_rng(0)
    nodes = tuple(f"kb:e{i}" for i in range(args.kg_nodes))
    triples = np.stack([rng.integers(args.kg_nodes, size=args.kg_triples),
                        rng.integers(10, size=args.kg_triples),
                        rng.integers(args.kg_nodes, size=args.kg_triples)], axis=1)
    store = KnowledgeGraph(nodes, tuple(f"r{i}" for i in range(10)), triples, {}).save(
        tmp / "kg.npz")
    items = [LinkedItem(f"i{i}", "action", tuple(
        (f"kb:e{e}", f"entity {e}", 1.0) for e in rng.choice(n_entities, 5, replace=False)),
        "d").encode() for i in range(n_items)]
    return store, items


def bench_kg(args) -> dict:
    """EntityGraph without and with a tied knowledge graph, interleaved per seed."""
    rates: dict[str, list[float]] = {"off": [], "kg": []}
    with tempfile.TemporaryDirectory() as kg_tmp:
        store, items = _kg_inputs(Path(kg_tmp), args)
        for seed in range(args.repeat):
            for mode in ("off", "kg"):
                over = {"trainer_kg_dim": 32, "trainer_kg_path": store} if mode == "kg" else {}
                with tempfile.TemporaryDirectory() as tmp:
                    torch.manual_seed(seed)
                    trainer = _online_trainer("entitygraph", Path(tmp), **over)
                    trainer.kind.item_records = lambda: items
                    _feed(trainer, _online_stream(args.eg_examples, seed + 100))
                    rates[mode].append(_feed(trainer, _online_stream(args.eg_examples, seed)))
    return {mode: statistics.median(r) for mode, r in rates.items()} | {
        "ratio": statistics.median(k / o for k, o in zip(rates["kg"], rates["off"],
                                                           strict=True))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-users", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--freeze-layers", type=int, default=4)
    p.add_argument("--onnx-tokens", type=int, default=128)
    p.add_argument("--latency-repeat", type=int, default=20)
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--continuous", action="store_true",
                   help="only the continuous trainer: EntityGraph vs EmbedMe")
    p.add_argument("--embedme-examples", type=int, default=64)
    p.add_argument("--eg-examples", type=int, default=20000)
    p.add_argument("--kg", action="store_true",
                   help="with --continuous: EntityGraph with a knowledge graph vs without")
    p.add_argument("--kg-nodes", type=int, default=50_000)
    p.add_argument("--kg-triples", type=int, default=200_000)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"device: cpu, torch threads {torch.get_num_threads()}")
    if args.continuous:
        from mekb.logs import configure_logging

        configure_logging("WARNING", False)
        if args.kg:
            k = bench_kg(args)
            print(f"continuous trainer entitygraph: {k['off']:.0f} examples/s without a KG, "
                  f"{k['kg']:.0f}/s with one (kg_dim 32, {args.kg_nodes} nodes, "
                  f"{args.kg_triples} triples); ratio {k['ratio']:.2f} (median of "
                  f"{args.repeat}, {args.eg_examples} examples each)")
            return
        c = bench_continuous(args)
        for kind, r in c.items():
            extra = (f"; first pass incl. encoding 4000 entity titles "
                     f"{r['first_pass_per_s']:.0f}/s" if r["first_pass_per_s"] else "")
            print(f"continuous trainer {kind}: {r['examples_per_s']:.1f} examples/s "
                  f"(median of {args.repeat}, {r['examples']} examples, batch {r['batch']}, "
                  f"replay {r['replay']}, torch threads {r['threads']}{extra})")
        print(f"EntityGraph / EmbedMe: "
              f"{c['entitygraph']['examples_per_s'] / c['embedme']['examples_per_s']:.0f}x")
        return
    if not args.skip_training:
        t = bench_training(args)
        print(f"training: trainer {t['trainer_examples_per_s']:.1f} ex/s, bare loop "
              f"{t['bare_examples_per_s']:.1f} ex/s, ratio {t['ratio']:.3f} "
              f"(median of {args.repeat}; {t['steps']} steps × {t['batch_users']} users, "
              f"{t['examples_per_run']} examples per run)")
    lat = bench_latency(args)
    for bs in (1, 32):
        r = lat[f"batch{bs}"]
        print(f"user tower batch {bs} ({r['seq']} tokens): eager {r['eager_ms']:.1f} ms, "
              f"ONNX {r['onnx_ms']:.1f} ms, ONNX/eager {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
