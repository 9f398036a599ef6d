"""Model versions from the registry, as the drift monitor needs them: user
embeddings of the probe texts and the item matrix of a version.

The user tower runs on ONNX Runtime through serving's encoder (one
implementation of tokenisation + session setup), on CPU with one thread: the
monitor encodes a few hundred probe users per new version and must not compete
with serving. The two most recent versions stay loaded (a model update compares
a version with its parent).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

import numpy as np

from mekb.registry import Registry

logger = logging.getLogger(__name__)


class RegistryModels:
    def __init__(self, registry: Registry, *, keep: int = 2) -> None:
        self.registry = registry
        self.keep = keep
        self._loaded: OrderedDict[str, tuple[Any, list[str], np.ndarray]] = OrderedDict()

    def _load(self, version: str) -> tuple[Any, list[str], np.ndarray]:
        if version in self._loaded:
            self._loaded.move_to_end(version)
            return self._loaded[version]
        from serving.encoder import OnnxEncoder

        mv = self.registry.verify(version)  # sha256 of every file, as serving does
        encoder = OnnxEncoder(mv.path, int(mv.manifest["max_tokens"]), device="cpu",
                              intra_op_threads=1)
        ids = json.loads(mv.file("items.json").read_text(encoding="utf-8"))["item_ids"]
        items = np.load(mv.file("items.npy"), allow_pickle=False)
        self._loaded[version] = (encoder, list(ids), items)
        while len(self._loaded) > self.keep:
            self._loaded.popitem(last=False)
        return self._loaded[version]

    def encode(self, version: str, texts: list[str]) -> np.ndarray:
        encoder = self._load(version)[0]
        out = [encoder.encode(texts[i : i + 64])[0] for i in range(0, len(texts), 64)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def items(self, version: str) -> tuple[list[str], np.ndarray]:
        _, ids, matrix = self._load(version)
        return ids, matrix
