"""Entity vectors from the pretrained encoder: each title encoded ONCE, batched, cached.

An entity's initial vector is the encoder's mean-pooled, L2-normalised embedding of
its title (all-MiniLM-L6-v2's sentence-embedding recipe). EntityGraph never runs the
transformer per user: the user tower only reads these vectors.

The cache is keyed by (encoder fingerprint, entity id, title): the fingerprint is a
sha256 over the encoder's config and every weight tensor, so a fine-tuned or swapped
encoder gets a new file and every vector is recomputed; an entity whose title changed
is re-encoded. One safetensors file per fingerprint (vectors + the ids/titles as JSON
metadata), replaced atomically — no pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

logger = logging.getLogger(__name__)

TITLE_TOKENS = 32  # entity titles are short; longer ones are names with a tail


def module_fingerprint(module: torch.nn.Module, config: Any = None) -> str:
    """sha256 of the config JSON and every parameter/buffer (name, shape, bytes)."""
    h = hashlib.sha256()
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode() if hasattr(
            config, "to_json_string") else json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class TitleEncoder:
    """A Hugging Face encoder + tokenizer turning titles into unit vectors."""

    def __init__(self, encoder: str | None = None, *, batch: int = 256,
                 module: torch.nn.Module | None = None, tokenizer: Any = None) -> None:
        """`encoder`: a HF directory (default all-MiniLM-L6-v2); or pass an already
        loaded `module` + `tokenizer` (e.g. EmbedMe's fine-tuned encoder)."""
        from transformers import AutoModel, AutoTokenizer

        from trainer.model import default_encoder

        if module is None:
            source = encoder or default_encoder()
            module = AutoModel.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer is None:
            raise ValueError("a loaded encoder module needs its tokenizer")
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.batch = batch
        hf_config: Any = module.config  # a Hugging Face PretrainedConfig
        self.dim = int(hf_config.hidden_size)
        self.fingerprint = module_fingerprint(module, hf_config)
        self.calls = 0  # titles encoded (tests and logs: how much the cache saved)

    @torch.no_grad()
    def encode(self, titles: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(titles), self.dim), dtype=np.float32)
        # length-sorted batches: little padding, so each forward is as short as possible
        order = sorted(range(len(titles)), key=lambda i: len(titles[i]))
        device = next(self.module.parameters()).device
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            enc = self.tokenizer([titles[i] or " " for i in idx], padding=True,
                                 truncation=True, max_length=TITLE_TOKENS,
                                 return_tensors="pt")
            mask = enc["attention_mask"].to(device)
            hidden = self.module(input_ids=enc["input_ids"].to(device),
                                 attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
        self.calls += len(titles)
        return out


class EntityVectorCache:
    """Vectors of (entity id, title) under one encoder, persisted in `directory`."""

    def __init__(self, directory: Path | None, encoder: TitleEncoder) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.encoder = encoder
        self._row: dict[str, int] = {}
        self._titles: list[str] = []
        self._ids: list[str] = []
        self._vectors = np.zeros((0, encoder.dim), dtype=np.float32)
        self._load()

    @property
    def path(self) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"entity-vectors-{self.encoder.fingerprint[:24]}.safetensors"

    def _load(self) -> None:
        path = self.path
        if path is None or not path.is_file():
            return
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
            ids = json.loads(meta["ids"])
            titles = json.loads(meta["titles"])
            vectors = load_file(str(path))["vectors"]
            if meta.get("fingerprint") != self.encoder.fingerprint or \
                    vectors.shape != (len(ids), self.encoder.dim) or len(titles) != len(ids):
                raise ValueError("inconsistent cache file")
        except Exception as exc:  # a torn or foreign file: recompute, never trust it
            logger.warning("entity-vector cache %s unusable (%s); recomputing", path, exc)
            return
        self._ids, self._titles, self._vectors = list(ids), list(titles), vectors
        self._row = {e: i for i, e in enumerate(self._ids)}

    def _save(self) -> None:
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"vectors": np.ascontiguousarray(self._vectors)}, str(tmp), metadata={
            "fingerprint": self.encoder.fingerprint,
            "ids": json.dumps(self._ids), "titles": json.dumps(self._titles)})
        os.replace(tmp, path)

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, entity_ids: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """float32 [len(entity_ids), dim]; encodes (in batches) only what is missing
        or whose title changed, then persists the grown cache."""
        if len(entity_ids) != len(titles):
            raise ValueError("entity_ids and titles must have the same length")
        todo: dict[str, str] = {}
        for e, t in zip(entity_ids, titles, strict=True):
            r = self._row.get(e)
            if r is None or self._titles[r] != t:
                todo[e] = t
        if todo:
            fresh = self.encoder.encode(list(todo.values()))
            grow = []
            for (e, t), vec in zip(todo.items(), fresh, strict=True):
                r = self._row.get(e)
                if r is None:
                    self._row[e] = len(self._ids)
                    self._ids.append(e)
                    self._titles.append(t)
                    grow.append(vec)
                else:
                    self._titles[r] = t
                    self._vectors[r] = vec
            if grow:
                self._vectors = np.concatenate([self._vectors, np.stack(grow)], axis=0)
            self._save()
            logger.info("entity vectors: encoded %d titles (%d cached)", len(todo), len(self))
        rows = np.fromiter((self._row[e] for e in entity_ids), dtype=np.int64,
                           count=len(entity_ids))
        return self._vectors[rows]
