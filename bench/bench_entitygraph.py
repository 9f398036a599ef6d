"""EntityGraph benchmarks (issue 15 targets), on the ml-100k drama → action scenario.

1. Training throughput, (user, positive) examples/s: `trainer.entitygraph.train`
   (one epoch: views built per epoch, checkpoint-free) vs a bare PyTorch loop over the
   same model and pre-built batches (forward, loss, backward, Adam only), vs the
   EmbedMe tower's offline trainer (CPU profile: 64 tokens, 4 frozen layers) in the
   same run. Target: EntityGraph >= 10,000 examples/s.
2. User embedding, users/s in ONNX Runtime: EntityGraph's exported tower fed from
   (entity id, score) MeKBs (host-side row lookup + gather included), the same graph
   on pre-gathered inputs, PyTorch eager, and the EmbedMe ONNX tower on the same
   users' texts (tokenisation included). Target: EntityGraph ONNX >= 10,000 users/s.
   The per-entity half of the tower (entity_tower.onnx, once per entity and model
   version) is timed separately, as entities/s.

Every figure is the median over --repeat interleaved runs.

    python bench/bench_entitygraph.py [--repeat 5] [--threads 0] [--embedme-steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _scenario():
    from trainer.data.scenario import ScenarioConfig, build_scenario
    from trainer.data.specs import load_dataset

    return build_scenario(load_dataset("ml100k"), ScenarioConfig(
        "drama", "action", min_item_positives=10, min_user_positives=5, seed=0))


def bench_training(sc, model, args) -> dict:
    from trainer.entitygraph.data import Views
    from trainer.entitygraph.train import (
        EntityGraphTrainConfig,
        make_index,
        make_optimizer,
        scenario_domains,
        train,
    )
    from trainer.losses import multi_positive_softmax

    cfg = EntityGraphTrainConfig(epochs=1, progress=False, checkpoint_every=10**9)
    domains = scenario_domains(sc)
    domain_rows = {d: model.domain_rows(d) for d in domains}
    item_col = {d: {model.item_ids[int(r)]: j for j, r in enumerate(rows)}
                for d, rows in domain_rows.items()}
    views = Views(make_index(model, sc), item_col, domains, seed=0,
                  batch_users=cfg.batch_users, p_cold=cfg.p_cold)
    batches = views.batches(0)
    n_examples = sum(b.n_examples for b in batches)

    def bare() -> float:
        opt = make_optimizer(model, cfg)
        model.train()
        t0 = time.perf_counter()
        for b in batches:
            users = model.encode_rows(b.rows, b.scores, b.mask)
            logits = users @ model.item_table[domain_rows[b.domain]].t()
            loss = multi_positive_softmax(logits, b.positives, b.pos_mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n_examples / (time.perf_counter() - t0)

    def ours() -> float:
        result = train(model, sc, cfg)
        return result.examples / result.seconds

    o_all, b_all, ratios = [], [], []
    for _ in range(args.repeat):
        o, b = ours(), bare()
        o_all.append(o)
        b_all.append(b)
        ratios.append(o / b)
    return {"ours": statistics.median(o_all), "bare": statistics.median(b_all),
            "ratio": statistics.median(ratios), "examples_per_epoch": n_examples,
            "batches": len(batches)}


def bench_embedme_training(sc, args) -> float:
    from trainer.model import EmbedMe, EmbedMeConfig
    from trainer.offline import TrainConfig, train

    torch.manual_seed(0)
    model = EmbedMe(EmbedMeConfig(max_tokens=64))
    cfg = TrainConfig(epochs=1, batch_users=32, freeze_layers=4, progress=False,
                      checkpoint_every=10**9)
    runs = []
    for _ in range(max(1, args.repeat // 2)):
        result = train(model, sc, cfg, max_steps=args.embedme_steps)
        runs.append(result.examples / result.seconds)
    return statistics.median(runs)


def bench_users(sc, model, args) -> dict:
    import numpy as np

    from trainer.data.mekb import MeKBBuilder
    from trainer.entitygraph.export import OnnxUserTower, write_user_tower
    from trainer.entitygraph.train import make_index
    from trainer.export import export_user_tower
    from trainer.model import EmbedMe, EmbedMeConfig

    model.eval()
    index = make_index(model, sc)
    users = sorted(index.users)
    ids = model.entity_ids
    mekbs = []
    for u in users:
        rows, scores = index.mekb(u)
        mekbs.append([(ids[int(r)], float(s)) for r, s in zip(rows, scores, strict=True)])
    bs = args.batch
    chunks = [mekbs[i : i + bs] for i in range(0, len(mekbs), bs)]
    out: dict = {"users": len(users), "batch": bs,
                 "median_mekb": float(np.median([len(m) for m in mekbs]))}
    with tempfile.TemporaryDirectory() as tmp:
        write_user_tower(model, Path(tmp))
        tower = OnnxUserTower(Path(tmp), threads=args.threads)
        # the pre-gathered and eager variants get the same length-bucketed groups
        # that `encode` forms, so all three do the same arithmetic
        order = sorted(range(len(mekbs)), key=lambda i: len(mekbs[i]))
        groups = [[mekbs[i] for i in order[s : s + 64]] for s in range(0, len(order), 64)]
        pre = [tower.rows(g) for g in groups]
        gathered = [(tower.table[r], s, m) for r, s, m in pre]
        torch_in = [tuple(torch.from_numpy(x) for x in g) for g in gathered]
        embedme = EmbedMe(EmbedMeConfig(max_tokens=64)).eval()
        export_user_tower(embedme, Path(tmp) / "embedme.onnx")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if args.threads > 0:
            opts.intra_op_num_threads = args.threads
        em_session = ort.InferenceSession(str(Path(tmp) / "embedme.onnx"), opts,
                                          providers=["CPUExecutionProvider"])
        builder = MeKBBuilder(sc.entities, sc.train)
        em_users = users[: args.embedme_users]
        em_texts = [builder.text(u, 64) for u in em_users]

        def full() -> float:
            t0 = time.perf_counter()
            for c in chunks:
                tower.encode(c)
            return len(users) / (time.perf_counter() - t0)

        def run_only() -> float:
            t0 = time.perf_counter()
            for v, s, m in gathered:
                tower.session.run(None, {"entity_features": v, "entity_scores": s,
                                         "entity_mask": m})
            return len(users) / (time.perf_counter() - t0)

        def eager() -> float:
            t0 = time.perf_counter()
            with torch.no_grad():
                for v, s, m in torch_in:
                    model.encode_features(v, s, m)
            return len(users) / (time.perf_counter() - t0)

        entity_session = ort.InferenceSession(str(Path(tmp) / "entity_tower.onnx"), opts,
                                              providers=["CPUExecutionProvider"])
        vecs = model.entity_vectors().detach().numpy()

        def entity_tower() -> float:
            t0 = time.perf_counter()
            entity_session.run(None, {"entity_vectors": vecs})
            return len(vecs) / (time.perf_counter() - t0)

        def embedme_onnx() -> float:
            t0 = time.perf_counter()
            for i in range(0, len(em_texts), 32):
                enc = embedme.tokenize(em_texts[i : i + 32])
                em_session.run(None, {k: v.numpy() for k, v in enc.items()})
            return len(em_texts) / (time.perf_counter() - t0)

        runs: dict[str, list[float]] = {k: [] for k in ("onnx", "onnx_run", "eager",
                                                         "embedme_onnx", "entities")}
        full(), run_only(), eager(), embedme_onnx(), entity_tower()  # warm-up
        for _ in range(args.repeat):
            runs["entities"].append(entity_tower())
            runs["onnx"].append(full())
            runs["onnx_run"].append(run_only())
            runs["eager"].append(eager())
            runs["embedme_onnx"].append(embedme_onnx())
    out.update({k: statistics.median(v) for k, v in runs.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0,
                   help="torch and ONNX Runtime intra-op threads (0 = library default)")
    p.add_argument("--batch", type=int, default=256, help="users per ONNX run")
    p.add_argument("--embedme-steps", type=int, default=3)
    p.add_argument("--embedme-users", type=int, default=64)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from trainer.entitygraph.model import EntityGraphConfig
    from trainer.entitygraph.train import build_model

    sc = _scenario()
    model = build_model(EntityGraphConfig(), sc, cache_dir=Path(tempfile.gettempdir())
                        / "mekb-bench-entity-vectors")
    print(f"device: cpu, torch threads {torch.get_num_threads()}, ml-100k drama->action, "
          f"{model.n_entities} entities, {model.n_items} items")
    t = bench_training(sc, model, args)
    em = bench_embedme_training(sc, args)
    print(f"training: EntityGraph trainer {t['ours']:,.0f} ex/s, bare PyTorch loop "
          f"{t['bare']:,.0f} ex/s (trainer/bare {t['ratio']:.3f}), EmbedMe tower {em:,.1f} "
          f"ex/s (EntityGraph/EmbedMe {t['ours'] / em:,.0f}x); {t['examples_per_epoch']} "
          f"examples in {t['batches']} batches per epoch, median of {args.repeat}")
    u = bench_users(sc, model, args)
    print(f"user embedding ({u['users']} users, batch {u['batch']}, median MeKB "
          f"{u['median_mekb']:.0f} entities): EntityGraph ONNX {u['onnx']:,.0f} users/s "
          f"(lookup+gather+run; run alone {u['onnx_run']:,.0f}), PyTorch eager "
          f"{u['eager']:,.0f} users/s, EmbedMe ONNX {u['embedme_onnx']:,.1f} users/s "
          f"(EntityGraph/EmbedMe {u['onnx'] / u['embedme_onnx']:,.0f}x), "
          f"ONNX run/eager {u['onnx_run'] / u['eager']:.2f}; entity tower (once per entity) "
          f"{u['entities']:,.0f} entities/s; median of {args.repeat}")


if __name__ == "__main__":
    main()
