"""Gate/refit scorers: the in-training torch model, and a published bundle as served.

A published version is scored through its own ONNX user tower, tokenizer (EmbedMe)
or entity table (EntityGraph: an entity it has no row for is skipped, as in serving)
and items.npy (what serving runs), so the gate compares against exactly what users
get, whichever way it became active (trainer or `mekb models activate`) and whatever
its model kind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.model import EmbedMe
from trainer.online.examples import Example
from trainer.online.gate import Scorer

logger = logging.getLogger(__name__)

BATCH = 32
MAX_CACHED = 200_000


class TorchScorer(Scorer):
    """The candidate: the torch model as it stands (eval mode, no grad); `embed` is its
    kind's user embeddings (trainer/online/kinds.py; default: EmbedMe's texts)."""

    def __init__(self, model: Any,
                 embed: Callable[[Any, Sequence[Example]], np.ndarray] | None = None) -> None:
        self.model = model
        self.embed = embed or _embedme_texts
        self.item_ids = list(model.item_ids)
        self.items = model.item_embeddings().detach().cpu().float().numpy()

    def user_embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.embed(model, examples)
        finally:
            model.train(was_training)


def _embedme_texts(model: EmbedMe, examples: Sequence[Example]) -> np.ndarray:
    out = [model.encode_texts([e.text(model.config.max_tokens) for e in examples[i:i + BATCH]]
                              ).cpu().float().numpy() for i in range(0, len(examples), BATCH)]
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), dtype=np.float32)


class TowerCache:
    """User embeddings by (user-tower sha256, example_id): a refit and the gate reuse
    them, and the active tower's are computed once per slice. Holds one tower."""

    def __init__(self) -> None:
        self.tower: str | None = None
        self.rows: dict[str, np.ndarray] = {}

    def get(self, tower: str) -> dict[str, np.ndarray]:
        # Examples leave the windows over time: bound the cache instead of tracking that.
        if tower != self.tower or len(self.rows) > MAX_CACHED:
            self.tower, self.rows = tower, {}
        return self.rows


class BundleScorer(Scorer):
    """A bundle directory (a registry version) scored with ONNX Runtime."""

    def __init__(self, path: Path, *, cache: TowerCache | None = None,
                 items: np.ndarray | None = None, item_ids: list[str] | None = None) -> None:
        self.path = Path(path)
        manifest: dict[str, Any] = json.loads((self.path / "manifest.json").read_text())
        self.max_tokens = int(manifest.get("max_tokens") or 128)
        self.model_kind = str(manifest.get("model_kind") or "embedme")
        files = manifest.get("files", {})
        # the tower = the graph and what feeds it (an items refit copies both unchanged)
        self.tower_id = "|".join(str(files.get(n) or "") for n in (
            "user_tower.onnx", "entities.npy")) if files else str(self.path)
        if items is None:
            self.items = np.load(self.path / "items.npy", allow_pickle=False).astype(np.float32)
            self.item_ids = [str(i) for i in json.loads(
                (self.path / "items.json").read_text())["item_ids"]]
        else:
            self.items, self.item_ids = items, list(item_ids or [])
        self.cache = cache or TowerCache()
        self._session: Any = None
        self._tokenizer: Any = None

    def with_items(self, items: np.ndarray, item_ids: list[str]) -> BundleScorer:
        """The same user tower with another item table (a refit candidate)."""
        return BundleScorer(self.path, cache=self.cache, items=items, item_ids=item_ids)

    def _load(self) -> None:
        import onnxruntime as ort

        if self.model_kind == "entitygraph":
            from trainer.entitygraph.export import OnnxUserTower

            self._session = OnnxUserTower(self.path, threads=max(1, torch.get_num_threads()))
            return
        from transformers import AutoTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self._session = ort.InferenceSession(
            str(self.path / "user_tower.onnx"), opts, providers=["CPUExecutionProvider"])
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))

    def _run(self, chunk: Sequence[Example]) -> np.ndarray:
        if self._tokenizer is None:  # EntityGraph: (entity id, MeKBScore) lists
            return self._session.encode([list(zip(e.entity_ids, e.scores, strict=True))
                                         for e in chunk])
        enc = self._tokenizer([e.text(self.max_tokens) for e in chunk], padding=True,
                              truncation=True, max_length=self.max_tokens, return_tensors="np")
        (emb,) = self._session.run(None, {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        })
        return np.asarray(emb)

    def user_embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        cached = self.cache.get(self.tower_id)
        todo = [e for e in examples if e.example_id not in cached]
        if todo:
            if self._session is None:
                self._load()
            step = BATCH if self._tokenizer is not None else 1024
            for i in range(0, len(todo), step):
                chunk = todo[i:i + step]
                for ex, row in zip(chunk, self._run(chunk), strict=True):
                    cached[ex.example_id] = row.astype(np.float32)
        if not examples:
            return np.zeros((0, self.items.shape[1] if self.items.ndim == 2 else 0),
                            dtype=np.float32)
        return np.stack([cached[e.example_id] for e in examples])
