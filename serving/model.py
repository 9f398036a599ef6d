"""One loaded model version: the ONE object a request pins for its whole life.

`LoadedModel` holds the user encoder of the version's model kind (serving/encoder.py:
`open_encoder` by the manifest's `model_kind`), the item matrix, item ids/domains and
the cold-start embedding of a single registry version. The
server swaps a single reference to it, so a request that read the reference once
computes its user embedding and scores its items with the same version, and an
in-flight request keeps the old object alive until it finishes.

Loading order (`load_model`): verify every sha256 against the manifest → open the
kind's encoder (session + tokenizer or entity table) → load items → warm up → compute
the cold-start embedding.
Only a fully loaded and warmed model is ever handed to the swap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mekb.registry import ModelVersion, Registry, RegistryError, sha256_file
from serving.encoder import Device, UserEncoder, open_encoder

logger = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A version could not be verified, loaded or warmed (the old one keeps serving)."""


def tower_key(manifest: dict[str, Any]) -> str:
    """Identity of the user tower: the same kind + ONNX graph + tokenizer (EmbedMe) or
    entity table (EntityGraph) + max_tokens give the same user embeddings, so an `items`
    refit keeps the cached user embeddings valid."""
    files = manifest.get("files") or {}
    parts = [f"max_tokens={manifest.get('max_tokens')}"]
    kind = manifest.get("model_kind")
    if kind is not None:  # absent = EmbedMe: keys of pre-kind bundles stay as they were
        parts.append(f"model_kind={kind}")
    parts += [f"{n}={d}" for n, d in sorted(files.items())
              if n in ("user_tower.onnx", "entity_tower.onnx", "entities.npy", "entities.json")
              or n.startswith("tokenizer/")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass(eq=False)
class ItemSet:
    """Item embeddings of one version and per-domain views of them."""

    matrix: np.ndarray  # float32 [n_items, dim]
    item_ids: list[str]
    domains: list[str]
    index: dict[str, int] = field(init=False)
    domain_rows: dict[str, np.ndarray] = field(init=False)
    domain_matrix: dict[str, np.ndarray] = field(init=False)
    local: np.ndarray = field(init=False)  # row -> position inside its domain's matrix

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.matrix.shape[0] != len(self.item_ids):
            raise ModelLoadError(
                f"items.npy shape {self.matrix.shape} does not match {len(self.item_ids)} ids"
            )
        if len(self.domains) != len(self.item_ids):
            raise ModelLoadError("items.json: item_ids and domains differ in length")
        self.index = {item: n for n, item in enumerate(self.item_ids)}
        by_domain: dict[str, list[int]] = {}
        for n, domain in enumerate(self.domains):
            by_domain.setdefault(domain, []).append(n)
        self.domain_rows = {d: np.asarray(r, dtype=np.int64) for d, r in by_domain.items()}
        self.local = np.zeros(len(self.item_ids), dtype=np.int64)
        for rows in self.domain_rows.values():
            self.local[rows] = np.arange(len(rows))
        # contiguous copies: one matrix-vector product per recommendation request
        self.domain_matrix = {
            d: np.ascontiguousarray(self.matrix[r]) for d, r in self.domain_rows.items()
        }


def load_items(path: Path, files: dict[str, str] | None = None) -> ItemSet:
    """items.npy + items.json of a bundle directory (checksums checked when given)."""
    for name in ("items.npy", "items.json"):
        if files is not None and sha256_file(path / name) != files.get(name):
            raise ModelLoadError(f"{path.name}/{name}: checksum mismatch")
    matrix = np.load(path / "items.npy", allow_pickle=False)
    meta = json.loads((path / "items.json").read_text(encoding="utf-8"))
    return ItemSet(np.ascontiguousarray(matrix, dtype=np.float32),
                   [str(i) for i in meta["item_ids"]], [str(d) for d in meta["domains"]])


@dataclass(eq=False)
class LoadedModel:
    version: str
    kind: str  # publication kind: full | items
    manifest: dict[str, Any]
    encoder: UserEncoder
    items: ItemSet
    tower: str
    max_tokens: int
    dim: int
    cold_embedding: np.ndarray
    loaded_at: float
    load_seconds: float
    model_kind: str = "embedme"

    @property
    def provider(self) -> str:
        return self.encoder.provider

    @property
    def batch_max(self) -> int:
        return self.encoder.batch_max

    def input_of(self, record: Any) -> Any:
        """The user-tower input of a replica record (UserRecord), as this kind needs it."""
        return self.encoder.input_of(record)

    def encode(self, inputs: list[Any]) -> tuple[np.ndarray, float]:
        return self.encoder.encode(inputs)


def load_model(
    registry: Registry,
    version: str,
    *,
    device: Device = "auto",
    intra_op_threads: int = 0,
    warm_batches: tuple[int, ...] = (1, 4),
) -> LoadedModel:
    """Verify, load and warm one version (blocking; run it off the event loop)."""
    start = time.perf_counter()
    try:
        mv: ModelVersion = registry.verify(version)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from None
    manifest = mv.manifest
    model_kind = mv.model_kind
    try:
        max_tokens = int(manifest.get("max_tokens") or 0)
        dim = int(manifest["dim"])
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"version {version}: manifest lacks max_tokens/dim") from None
    try:
        encoder = open_encoder(model_kind, mv.path, manifest, device=device,
                               intra_op_threads=intra_op_threads)
        items = load_items(mv.path)
        if items.matrix.shape[1] != dim:
            raise ModelLoadError(f"version {version}: items dim {items.matrix.shape[1]} != {dim}")
        encoder.warm_up(warm_batches)
        cold, _ = encoder.encode([encoder.input_of(None)])
    except ModelLoadError:
        raise
    except Exception as exc:  # onnxruntime/transformers raise many types on a bad bundle
        raise ModelLoadError(f"version {version}: {type(exc).__name__}: {exc}") from exc
    if cold.shape != (1, dim):
        raise ModelLoadError(
            f"version {version}: user tower output {cold.shape}, manifest dim {dim}")
    elapsed = time.perf_counter() - start
    logger.info("loaded model %s (%s %s, provider %s) in %.2fs", version, model_kind,
                mv.kind, encoder.provider, elapsed)
    return LoadedModel(
        version=version, kind=mv.kind, manifest=manifest, encoder=encoder, items=items,
        tower=tower_key(manifest), max_tokens=max_tokens, dim=dim,
        cold_embedding=cold[0], loaded_at=time.time(), load_seconds=elapsed,
        model_kind=model_kind,
    )
