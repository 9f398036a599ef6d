"""The EntityGraph kind: MeKB entities → entity vectors → attention user tower."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainer.entitygraph.model import EntityGraph
from trainer.entitygraph.vectors import EntityVectorCache
from trainer.kinds import MeKBEntity


class EntityGraphKind:
    name = "entitygraph"

    def __init__(self, vectors: EntityVectorCache | None = None) -> None:
        """`vectors`: title vectors for entities the model has no row for (must come
        from the encoder the model was initialised with); without it they are left
        out of the MeKB."""
        self.vectors = vectors

    def load(self, directory: Path, map_location: str = "cpu") -> EntityGraph:
        return EntityGraph.load(directory, map_location)

    def save(self, model: EntityGraph, directory: Path) -> None:
        model.save(directory)

    def _fresh(self, model: EntityGraph, mekbs: Sequence[Sequence[MeKBEntity]]
               ) -> dict[str, Tensor]:
        if self.vectors is None:
            return {}
        fp = model.config.encoder_fingerprint
        if fp is not None and fp != self.vectors.encoder.fingerprint:
            raise ValueError("the entity-vector cache's encoder is not the model's")
        new = {e.entity_id: e.title for m in mekbs for e in m
               if model.entity_row(e.entity_id) is None}
        if not new:
            return {}
        vecs = self.vectors.get(list(new), list(new.values()))
        return {e: torch.from_numpy(np.asarray(v)) for e, v in zip(new, vecs, strict=True)}

    def encode(self, model: EntityGraph, mekbs: Sequence[Sequence[MeKBEntity]]) -> Tensor:
        fresh = self._fresh(model, mekbs)
        width = max(1, max((len(m) for m in mekbs), default=1))
        vectors = torch.zeros(len(mekbs), width, model.vector_dim)
        scores = torch.zeros(len(mekbs), width)
        mask = torch.zeros(len(mekbs), width)
        with torch.no_grad():
            table = model.entity_vectors()
            for i, m in enumerate(mekbs):
                j = 0
                for e in m:
                    row = model.entity_row(e.entity_id)
                    vec = table[row] if row is not None else fresh.get(e.entity_id)
                    if vec is None:
                        continue
                    vectors[i, j], scores[i, j], mask[i, j] = vec, float(e.score), 1.0
                    j += 1
            return model.encode(vectors, scores, mask)

    def export_onnx(self, model: EntityGraph, out_dir: Path) -> dict[str, Any]:
        from trainer.entitygraph.export import write_user_tower

        return write_user_tower(model, Path(out_dir))

    def parity(self, model: EntityGraph, out_dir: Path) -> float:
        from trainer.entitygraph.export import parity

        return parity(model, Path(out_dir))
