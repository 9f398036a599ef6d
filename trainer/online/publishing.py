"""Bundles the continuous trainer publishes, and where its weights live in them.

A `full` version carries, besides the serving files of docs/contracts.md, the
trainer's weights: `embedme/` = `EmbedMe.save()` output (safetensors + JSON, part of
the manifest checksums; EntityGraph: `entitygraph/`, trainer/online/kinds.py). A
trainer whose own checkpoints are gone (fresh volume, another machine) resumes from
the active version with it. An `items` version carries no weights: its user tower is
its parent's, so a resume loads the parent's and overlays the items version's item
table (`overlay_items`; kinds.py `load_version`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mekb.registry import ModelVersion, Registry, VersionNotFound
from trainer.export import write_bundle
from trainer.model import EmbedMe

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
