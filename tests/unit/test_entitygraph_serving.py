"""Serving's EntityGraph encoder on whole batches (issue 16): the batch path (ids resolved
in one pass, users grouped by MeKB size, each group padded to its own longest MeKB)
gives every user the embedding PyTorch's unsplit tower gives it alone, in input order;
unknown entities are skipped and counted, a missing score counts as 0. And the
refresher, which reuses the record it was handed instead of re-reading the replica,
does not precompute a user whose deletion arrived in the same batch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from mekb.settings import Settings
from serving.encoder import EntityGraphEncoder
from serving.metrics import ServingMetrics
from serving.replica import Incoming, Replica, parse_record
from serving.service import EmbeddingService
from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
from trainer.online.kinds import EntityGraphOnline

N_ENTITIES = 300


def _model_and_bundle(tmp_path: Path) -> tuple[EntityGraph, Path]:
    torch.manual_seed(0)
    model = EntityGraph(EntityGraphConfig(dim=16, hidden=32), 24).eval()
    vecs = np.random.default_rng(0).standard_normal((N_ENTITIES, 24)).astype(np.float32)
    model.add_entities([f"kb:e{n}" for n in range(N_ENTITIES)], vecs)
    model.add_items(["i0", "i1"], ["movies", "movies"])
    bundle = EntityGraphOnline(Settings()).write_full_bundle(
        model, tmp_path / "bundle", version="20261130T000000Z-eg0001", parent=None,
        gate={}, metrics={}, offsets={})
    return model, bundle


def _record(user: str, version: int, entities: list[dict[str, object]]) -> bytes:
    return json.dumps({"user_id": user, "version": version, "ts": 1.0, "updated_at": 1.0,
                       "entities": entities}).encode()


def _torch_user(model: EntityGraph, ents: list[dict[str, object]]) -> np.ndarray:
    known = [(int(str(e["id"]).removeprefix("kb:e")), float(e.get("score") or 0.0))  # type: ignore[arg-type]
             for e in ents if str(e["id"]).startswith("kb:e")]
    rows = torch.tensor([[r for r, _ in known] or [0]])
    scores = torch.tensor([[s for _, s in known] or [0.0]])
    mask = torch.tensor([[1.0] * len(known) or [0.0]])
    with torch.no_grad():
        return model.encode_rows(rows, scores, mask)[0].numpy()


def test_batch_encode_matches_torch_per_user(tmp_path: Path) -> None:
    model, bundle = _model_and_bundle(tmp_path)
    enc = EntityGraphEncoder(bundle, device="cpu")
    rng = np.random.default_rng(1)
    mekbs: list[list[dict[str, object]]] = []
    for _ in range(150):  # > 2 groups, sizes 0..80 in random order
        size = int(rng.integers(0, 81))
        picks = rng.choice(N_ENTITIES, size=size, replace=False)
        mekbs.append([{"id": f"kb:e{p}", "score": float(rng.random())} for p in picks])
    mekbs[3].append({"id": "kb:unknown", "score": 0.9})  # no row in this version
    mekbs[4][0].pop("score")  # a missing score counts as 0
    mekbs[5] = [{"id": "kb:other"}]  # nothing known: the empty MeKB
    recs = [parse_record(_record(f"u{n}", 1, m)) for n, m in enumerate(mekbs)]
    out, run_s = enc.encode([enc.input_of(r) for r in recs])
    assert out.shape == (150, model.out_dim) and run_s > 0
    assert enc.unknown_entities == 2
    ref = np.stack([_torch_user(model, m) for m in mekbs])
    assert np.abs(out - ref).max() < 1e-4
    empty, _ = enc.encode([enc.input_of(None)])
    assert np.allclose(empty[0], out[5], atol=1e-6)  # unknown-only MeKB = empty MeKB
    # a user's embedding does not depend on the batch it is computed in
    alone, _ = enc.encode([enc.input_of(recs[7])])
    assert np.abs(alone[0] - out[7]).max() < 1e-5


def test_refresher_skips_a_user_deleted_in_the_same_batch(tmp_path: Path) -> None:
    from mekb.registry import Registry
    from serving.model import load_model

    _, bundle = _model_and_bundle(tmp_path)
    reg = Registry(tmp_path / "registry")
    reg.publish(bundle, move=True)
    loaded = load_model(reg, "20261130T000000Z-eg0001", device="cpu")

    async def run() -> None:
        service = EmbeddingService(Replica(None), ServingMetrics(CollectorRegistry()))
        service.replica_caught_up = True
        await service.start()
        try:
            service.activate(loaded)
            ents = [{"id": "kb:e1", "score": 0.5}]
            service.on_applied(service.replica.apply([
                Incoming(0, 0, b"kept", _record("kept", 1, ents)),
                Incoming(0, 1, b"gone", _record("gone", 1, ents)),
                Incoming(0, 2, b"gone", None)]))
            for _ in range(200):
                if service.cache.get("kept", 1, loaded.tower) is not None:
                    break
                await asyncio.sleep(0.01)
            assert service.cache.get("kept", 1, loaded.tower) is not None
            assert service.cache.get_any("gone", loaded.tower) is None
            assert service.replica.get("gone") is None
        finally:
            await service.stop()

    asyncio.run(run())
