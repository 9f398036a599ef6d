"""Trainer benchmarks (issue 5 targets).

1. Offline training throughput, examples/s ((user, positive) pairs per second), of
   `trainer.offline.train` vs a bare PyTorch loop over the same model and the same
   user batches (texts + positives built beforehand; the bare loop only tokenizes,
   runs forward/loss/backward/LAMB step). Runs are interleaved and repeated; the
   median ratio is reported (target >= 0.9).
2. User-tower latency, ONNX Runtime vs PyTorch eager, at batch 1 and 32 (target
   ONNX/eager <= 1.0), medians over repeated calls on the same inputs.

    python bench/bench_trainer.py [--steps 6] [--repeat 3] [--max-tokens 64]
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
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"device: cpu, torch threads {torch.get_num_threads()}")
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
