"""Bundles the continuous trainer publishes, and where its weights live in them.

A `full` version carries, besides the serving files of docs/contracts.md, the
trainer's weights: `embedme/` = `EmbedMe.save()` output (safetensors + JSON, part of
the manifest checksums). A trainer whose own checkpoints are gone (fresh volume,
another machine) resumes from the active version with it. An `items` version
carries no `embedme/`: its user tower is its parent's, so a resume loads the
parent's `embedme/` and overlays the items version's item table (`load_version`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from mekb.registry import ModelVersion, Registry, VersionNotFound
from trainer.export import write_bundle
from trainer.model import EmbedMe, EmbedMeConfig

logger = logging.getLogger(__name__)

EMBEDME_DIR = "embedme"


def build_full_bundle(
    model: EmbedMe, out_dir: Path, *, version: str, parent: str | None,
    gate: dict[str, Any], metrics: dict[str, Any], offsets: dict[str, int],
) -> Path:
    """user_tower.onnx, tokenizer/, items.*, manifest.json and embedme/ in out_dir."""
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a leftover of a crashed attempt: start clean
    out_dir.mkdir(parents=True)
    model.save(out_dir / EMBEDME_DIR)
    return write_bundle(model, out_dir, version=version, kind="full", parent=parent,
                        metrics=metrics, gate=gate, training_offsets=offsets)


class ItemTableView:
    """What write_bundle(kind="items") reads from a model: config and the item table.

    The refit table belongs to the *published* tower, not to the live torch model, so
    it is handed over on its own rather than written into the live model.
    """

    def __init__(self, config: EmbedMeConfig, table: np.ndarray, item_ids: Sequence[str],
                 item_domains: Sequence[str]) -> None:
        self.config = config
        self._table = torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))
        self.item_ids = list(item_ids)
        self.item_domains = list(item_domains)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_embeddings(self) -> torch.Tensor:
        return self._table


def tower_config(manifest: dict[str, Any]) -> EmbedMeConfig:
    """The EmbedMe config a bundle's user tower was exported with (for its manifest)."""
    encoder = manifest.get("encoder")
    return EmbedMeConfig(
        encoder=encoder if isinstance(encoder, str) and Path(encoder).exists() else None,
        dim=int(manifest.get("dim") or 256),
        max_tokens=int(manifest.get("max_tokens") or 128),
        k_star=float(manifest.get("k_star") or 5.0),
        pretrained=bool(manifest.get("pretrained", True)),
    )


def build_items_bundle(
    view: ItemTableView, out_dir: Path, *, version: str, parent: str, tower_dir: Path,
    gate: dict[str, Any], metrics: dict[str, Any], offsets: dict[str, int],
) -> Path:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    # write_bundle reads config, item ids/domains and item_embeddings() for kind="items".
    return write_bundle(cast(EmbedMe, view), out_dir, version=version, kind="items",
                        parent=parent, metrics=metrics, gate=gate, training_offsets=offsets,
                        user_tower_from=tower_dir)


def publish(registry: Registry, bundle: Path, *, version: str, kind: str, parent: str | None,
            extra: dict[str, Any]) -> ModelVersion:
    """Publish (atomic: staging + rename) and activate, unless the registry is pinned:
    then the version is published inactive (`held` in the history and, when the pin was
    there before the publication, in its manifest). Idempotent for a version id that a
    crashed attempt already published: it is then only activated (or held) if it was
    neither before."""
    try:
        mv = registry.get(version)
    except VersionNotFound:
        mv = None
    if mv is None:
        pin = registry.pinned()
        if pin is not None:
            extra = {**extra, "held": {"pinned_version": pin.version, "pin_reason": pin.reason}}
        mv = registry.publish(bundle, parent=parent, kind=kind,  # type: ignore[arg-type]
                              version=version, move=True, activate=False, extra=extra)
    else:
        logger.info("version %s was published before a restart; not publishing again", version)
        shutil.rmtree(bundle, ignore_errors=True)
    history: Any = registry.history()  # (typed via Registry.list, which mypy confuses)
    if not any(e.get("version") == version for e in history):
        registry.promote(version)
    return mv


def weights_dir(registry: Registry, mv: ModelVersion, max_hops: int = 16) -> ModelVersion | None:
    """The nearest version in mv's lineage (itself first) that carries embedme/."""
    current: ModelVersion | None = mv
    for _ in range(max_hops):
        if current is None:
            return None
        if (current.path / EMBEDME_DIR / "model.safetensors").is_file():
            return current
        if not current.parent:
            return None
        try:
            current = registry.get(current.parent)
        except VersionNotFound:
            return None
    return None


def load_version(registry: Registry, mv: ModelVersion) -> EmbedMe | None:
    """The EmbedMe of a registry version (embedme/ of it or its lineage, with mv's own
    item table on top), or None when no version in its lineage carries weights."""
    source = weights_dir(registry, mv)
    if source is None:
        return None
    model = EmbedMe.load(source.path / EMBEDME_DIR)
    if source.version != mv.version:
        overlay_items(model, mv.path)
    return model


def overlay_items(model: EmbedMe, bundle: Path) -> None:
    """Set the model's item rows to a bundle's items.npy (adding unknown items)."""
    table = np.load(bundle / "items.npy", allow_pickle=False)
    meta = json.loads((bundle / "items.json").read_text(encoding="utf-8"))
    ids = [str(i) for i in meta["item_ids"]]
    rows = model.add_items(ids, [str(d) for d in meta["domains"]])
    if ids:
        with torch.no_grad():
            model.item_table[torch.tensor(rows)] = torch.from_numpy(
                np.asarray(table, dtype=np.float32)).to(model.item_table.dtype)
