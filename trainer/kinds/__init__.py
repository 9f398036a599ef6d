"""Model kinds: one small interface, registered by short name.

Trainer and serving ask the registry for a kind instead of branching on model
classes. A kind turns a batch of MeKBs into user embeddings, saves/loads its model
(safetensors + JSON) and writes/checks its ONNX user tower; the item tower is the
same ID table for every kind (`item_ids`, `item_domains`, `item_embeddings()`,
`add_items`, `item_rows`), so item refits and scoring need no kind.

A MeKB is a sequence of `MeKBEntity(entity_id, title, score)`, best first — what a
`mekb-updates` record carries (serving.replica.UserRecord.entities).

Kinds are imported lazily (importing one must not load the others' dependencies);
a saved model directory names its kind in config.json ("kind"); a directory
without it predates kinds and is EmbedMe.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from torch import Tensor


class MeKBEntity(NamedTuple):
    entity_id: str
    title: str
    score: float


class KindError(Exception):
    """An unknown model kind, or a directory whose kind does not match."""


class ModelKind(Protocol):
    name: str

    def load(self, directory: Path, map_location: str = "cpu") -> Any: ...

    def save(self, model: Any, directory: Path) -> None: ...

    def encode(self, model: Any, mekbs: Sequence[Sequence[MeKBEntity]]) -> Tensor:
        """[len(mekbs), K] user embeddings (no gradient; model in eval mode)."""
        ...

    def export_onnx(self, model: Any, out_dir: Path) -> dict[str, Any]:
        """Write the user tower's files (ONNX graph + what it needs) into `out_dir`;
        return the manifest fields describing them."""
        ...

    def parity(self, model: Any, out_dir: Path) -> float:
        """Max abs difference between ONNX Runtime on `out_dir` and PyTorch."""
        ...


_KINDS: dict[str, str | ModelKind] = {
    "embedme": "trainer.kinds.embedme:EmbedMeKind",
    "entitygraph": "trainer.kinds.entitygraph:EntityGraphKind",
}
DEFAULT_KIND = "embedme"  # directories and manifests written before kinds existed


def register(name: str, kind: str | ModelKind) -> None:
    """`kind`: an instance, or "module:Class" imported on first use."""
    _KINDS[name] = kind


def kind_names() -> list[str]:
    return sorted(_KINDS)


def get_kind(name: str) -> ModelKind:
    entry = _KINDS.get(name)
    if entry is None:
        raise KindError(f"unknown model kind {name!r} (known: {', '.join(kind_names())})")
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = _KINDS[name] = getattr(importlib.import_module(module), cls)()
    return entry


def kind_of(directory: Path) -> str:
    """The kind a saved model directory declares (config.json "kind"; none = EmbedMe)."""
    path = Path(directory) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KindError(f"{directory} is not a model directory (no config.json)") from None
    except json.JSONDecodeError as exc:
        raise KindError(f"{path}: not JSON ({exc})") from None
    return str(data.get("kind") or DEFAULT_KIND)


def load_model(directory: Path, map_location: str = "cpu") -> tuple[ModelKind, Any]:
    kind = get_kind(kind_of(directory))
    return kind, kind.load(Path(directory), map_location)
