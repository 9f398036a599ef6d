"""EmbedMe: item-table growth, domain masking, safetensors round trip (real MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.model import (
    EmbedMe,
    EmbedMeConfig,
    ModelError,
    default_encoder,
    mean_pool,
    replace_param_in_optimizer,
)


@pytest.fixture(scope="module")
def model() -> EmbedMe:
    torch.manual_seed(0)
    return EmbedMe(EmbedMeConfig(dim=16, max_tokens=16), ["i1", "i2", "i3"], ["a", "a", "b"])


def test_default_encoder_is_minilm() -> None:
    cfg = json.loads((Path(default_encoder()) / "config.json").read_text())
    assert cfg["hidden_size"] == 384 and cfg["num_hidden_layers"] == 6


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_tokenize_truncates_to_max_tokens(model: EmbedMe) -> None:
    batch = model.tokenize(["word " * 100, "short"])
    assert batch["input_ids"].dtype == torch.int64
    assert batch["attention_mask"].dtype == torch.int64
    assert batch["input_ids"].shape == (2, 16)
    assert int(batch["attention_mask"][1].sum()) < 16


def test_encode_users_shape_and_padding_invariance(model: EmbedMe) -> None:
    model.eval()
    with torch.no_grad():
        alone = model.encode_texts(["star wars [SEP] harrison ford"])
        padded = model.encode_texts(["star wars [SEP] harrison ford", "a much longer text " * 3])
    assert alone.shape == (1, 16)
    # padding must not change a user's embedding (mean pool over non-padding tokens)
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_item_table_growth_keeps_trained_rows() -> None:
    torch.manual_seed(1)
    m = EmbedMe(EmbedMeConfig(dim=8, max_tokens=8), ["x", "y"], ["a", "a"])
    with torch.no_grad():
        m.item_table[:] = torch.arange(16, dtype=torch.float32).view(2, 8)
    before = m.item_table.detach().clone()
    rows = m.add_items(["y", "z", "w", "z"], ["a", "b", "b", "b"])
    assert rows == [1, 2, 3, 2]  # known id keeps its row; duplicate new id gets one row
    assert m.n_items == 4 and m.item_ids == ["x", "y", "z", "w"]
    assert m.item_domains == ["a", "a", "b", "b"]
    assert torch.equal(m.item_table[:2].detach(), before)
    assert m.item_table.shape == (4, 8) and m.item_table.requires_grad
    assert m.item_rows(["w", "x"]).tolist() == [3, 0]
    with pytest.raises(KeyError):
        m.item_rows(["nope"])
    assert m.domain_mask("b").tolist() == [False, False, True, True]
    assert m.add_items(["x"], ["a"]) == [0] and m.n_items == 4


def test_logits_mask_other_domains(model: EmbedMe) -> None:
    user = torch.randn(2, 16)
    full = model.logits(user)
    assert torch.allclose(full, user @ model.item_embeddings().t())
    masked = model.logits(user, "a")
    assert torch.isinf(masked[:, 2]).all() and torch.isfinite(masked[:, :2]).all()
    probs = torch.softmax(masked, dim=-1)
    assert torch.allclose(probs[:, :2].sum(-1), torch.ones(2))
    with pytest.raises(KeyError):
        model.logits(user, "nope")


def test_optimizer_follows_grown_table() -> None:
    m = EmbedMe(EmbedMeConfig(dim=4, max_tokens=8), ["x"], ["a"])
    opt = torch.optim.AdamW([m.item_table], lr=0.1)
    m.item_table.sum().backward()
    opt.step()
    old = m.item_table
    m.add_items(["y"], ["a"])
    replace_param_in_optimizer(opt, old, m.item_table)
    assert opt.param_groups[0]["params"][0] is m.item_table
    assert opt.state[m.item_table]["exp_avg"].shape == (2, 4)
    opt.zero_grad()
    m.item_table.sum().backward()
    opt.step()  # works on the grown parameter


def test_save_load_round_trip(model: EmbedMe, tmp_path: Path) -> None:
    model.add_items(["i4"], ["b"])
    with torch.no_grad():
        model.item_table[3] = 7.0
    model.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model.safetensors", "config.json", "items.json", "tokenizer"} <= files
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "m").rglob("*"))
    loaded = EmbedMe.load(tmp_path / "m")
    assert loaded.config == model.config
    assert loaded.item_ids == model.item_ids and loaded.item_domains == model.item_domains
    assert torch.equal(loaded.item_embeddings(), model.item_embeddings().detach())
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a = model.encode_texts(["the matrix [SEP] keanu reeves"])
        b = loaded.encode_texts(["the matrix [SEP] keanu reeves"])
    assert torch.allclose(a, b, atol=1e-6)
    assert loaded.add_items(["i5"], ["a"]) == [4]


def test_load_rejects_incomplete_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        EmbedMe.load(tmp_path)


def test_without_plm_is_random_init(model: EmbedMe) -> None:
    torch.manual_seed(0)
    ablation = EmbedMe(EmbedMeConfig(dim=16, max_tokens=16, pretrained=False))
    w_pre = model.encoder.embeddings.word_embeddings.weight
    w_rand = ablation.encoder.embeddings.word_embeddings.weight
    assert w_pre.shape == w_rand.shape
    assert not torch.allclose(w_pre, w_rand)
