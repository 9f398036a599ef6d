"""ONNX user tower vs PyTorch (real MiniLM, real ONNX Runtime) and the model bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mekb.registry import Registry, sha256_file
from trainer.export import export_user_tower, write_bundle
from trainer.model import EmbedMe, EmbedMeConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model() -> EmbedMe:
    torch.manual_seed(0)
    m = EmbedMe(EmbedMeConfig(dim=32, max_tokens=24), ["i1", "i2", "i3"], ["a", "a", "b"])
    return m.eval()


def test_onnx_parity_dynamic_axes(model: EmbedMe, tmp_path: Path) -> None:
    import onnxruntime as ort

    path = tmp_path / "user_tower.onnx"
    export_user_tower(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert session.get_outputs()[0].name == "user_embedding"
    worst = 0.0
    # shapes other than the export example (2×8): batch 1, 3 and a truncated sequence
    for texts in (
        ["star wars [SEP] harrison ford"],
        ["a [SEP] b", "the godfather [SEP] al pacino [SEP] crime film", "x"],
        ["word " * 80, "short text"],
    ):
        batch = model.tokenize(texts)
        with torch.no_grad():
            ref = model.encode_users(**batch).numpy()
        out = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
        assert out.dtype == np.float32 and out.shape == ref.shape
        worst = max(worst, float(np.abs(out - ref).max()))
    print(f"ONNX vs PyTorch max abs diff: {worst:.3e}")
    assert worst < 1e-4


def test_bundle_layout_and_registry(model: EmbedMe, tmp_path: Path) -> None:
    bundle = write_bundle(
        model, tmp_path / "bundle", version="20261124T120000Z-abc123",
        metrics={"hr@10": 0.5}, training_offsets={"0": 12},
    )
    names = {p.name for p in bundle.iterdir()}
    assert names == {"manifest.json", "user_tower.onnx", "tokenizer", "items.npy", "items.json"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key in ("version", "parent", "kind", "created_at", "encoder", "max_tokens", "dim",
                "k_star", "files", "metrics", "gate", "training_offsets"):
        assert key in manifest
    assert manifest["dim"] == 32 and manifest["max_tokens"] == 24 and manifest["kind"] == "full"
    assert manifest["files"]["items.npy"] == sha256_file(bundle / "items.npy")
    items = np.load(bundle / "items.npy", allow_pickle=False)
    ids = json.loads((bundle / "items.json").read_text())
    assert items.dtype == np.float32 and items.shape == (3, 32)
    assert ids == {"item_ids": ["i1", "i2", "i3"], "domains": ["a", "a", "b"]}
    np.testing.assert_array_equal(items, model.item_embeddings().detach().numpy())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    assert tok("hello")["input_ids"] == model.tokenizer("hello")["input_ids"]

    registry = Registry(tmp_path / "registry")
    version = registry.publish(bundle, activate=True)
    assert version.version == "20261124T120000Z-abc123"
    assert registry.verify(version.version).manifest["dim"] == 32
    assert registry.active_version() == version.version

    # an `items` refit: new item rows, user tower and tokenizer copied from the parent
    model.add_items(["i4"], ["b"])
    refit = write_bundle(
        model, tmp_path / "refit", version="20261124T130000Z-def456", kind="items",
        parent=version.version, user_tower_from=version.path,
    )
    assert sha256_file(refit / "user_tower.onnx") == sha256_file(bundle / "user_tower.onnx")
    assert np.load(refit / "items.npy").shape == (4, 32)
    v2 = registry.publish(refit, kind="items", parent=version.version)
    assert v2.kind == "items" and v2.parent == version.version
