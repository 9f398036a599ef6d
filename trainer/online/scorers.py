"""Gate/refit scorers: the in-training torch model, and a published bundle as served.

A published version is scored through its own ONNX user tower, tokenizer and
items.npy (what serving runs), so the gate compares against exactly what users get,
whichever way it became active (trainer or `mekb models activate`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
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
    """The candidate: the torch model as it stands (eval mode, no grad)."""

    def __init__(self, model: EmbedMe) -> None:
        self.model = model
        self.item_ids = list(model.item_ids)
        self.items = model.item_embeddings().detach().cpu().float().numpy()

    def user_embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        model = self.model
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.no_grad():
                for i in range(0, len(examples), BATCH):
                    texts = [e.text(model.config.max_tokens) for e in examples[i:i + BATCH]]
                    out.append(model.encode_texts(texts).cpu().float().numpy())
        finally:
            model.train(was_training)
        if not out:
            return np.zeros((0, model.config.dim), dtype=np.float32)
        return np.concatenate(out)


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
        self.tower_id = str(manifest.get("files", {}).get("user_tower.onnx") or self.path)
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
        from transformers import AutoTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self._session = ort.InferenceSession(
            str(self.path / "user_tower.onnx"), opts, providers=["CPUExecutionProvider"])
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))

    def user_embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        cached = self.cache.get(self.tower_id)
        todo = [e for e in examples if e.example_id not in cached]
        if todo:
            if self._session is None:
                self._load()
            for i in range(0, len(todo), BATCH):
                chunk = todo[i:i + BATCH]
                enc = self._tokenizer([e.text(self.max_tokens) for e in chunk], padding=True,
                                      truncation=True, max_length=self.max_tokens,
                                      return_tensors="np")
                (emb,) = self._session.run(None, {
                    "input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64),
                })
                for ex, row in zip(chunk, emb, strict=True):
                    cached[ex.example_id] = row.astype(np.float32)
        if not examples:
            return np.zeros((0, self.items.shape[1] if self.items.ndim == 2 else 0),
                            dtype=np.float32)
        return np.stack([cached[e.example_id] for e in examples])
