"""EntityGraph: attention (hand-checkable properties), MeKB scores against
mekb.scoring, the title-vector cache (recomputed when the encoder changes), save/load,
the model-kind registry, and ONNX Runtime parity of the exported user tower."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from linker.base import LinkedEntity
from mekb.scoring import mekb_scores
from trainer.data.base import Interaction
from trainer.entitygraph.data import MeKBIndex, pad
from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
from trainer.entitygraph.vectors import EntityVectorCache, TitleEncoder
from trainer.kinds import KindError, MeKBEntity, get_kind, kind_names, kind_of

H = 8


def _model(prior: float = 1.0, n_entities: int = 6, seed: int = 0) -> EntityGraph:
    torch.manual_seed(seed)
    model = EntityGraph(EntityGraphConfig(dim=4, hidden=16, attn_dim=8, prior=prior), H)
    model.add_entities([f"e{i}" for i in range(n_entities)],
                       np.random.default_rng(seed).standard_normal((n_entities, H)))
    model.add_items(["a", "b", "c"], ["x", "x", "y"])
    return model.eval()


def test_attention_sums_to_one_and_masks_padding() -> None:
    model = _model()
    vectors = torch.randn(2, 4, H)
    scores = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.7, 0.3, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        w = model.attention(vectors, scores, mask)
        assert torch.allclose(w.sum(-1), torch.ones(2), atol=1e-6)
        assert torch.all(w[mask == 0] == 0)
        before = model.encode(vectors, scores, mask)
        garbage = vectors.clone()
        garbage[mask == 0] = 1e3  # whatever sits in padding must not matter
        assert torch.allclose(model.encode(garbage, scores, mask), before, atol=1e-6)
        # the same MeKB without the padding column gives the same user
        assert torch.allclose(model.encode(vectors[:1, :3], scores[:1, :3], mask[:1, :3]),
                              before[:1], atol=1e-6)


def test_attention_is_the_hand_computed_softmax() -> None:
    model = _model(prior=2.0)
    vectors = torch.randn(1, 3, H)
    scores = torch.tensor([[0.6, 0.3, 0.1]])
    with torch.no_grad():
        w = model.attention(vectors, scores, torch.ones(1, 3))[0]
        beta = float(torch.nn.functional.softplus(model.prior_raw))
        assert beta == pytest.approx(2.0, rel=1e-5)
        logits = [float(torch.tanh(model.attn(vectors[0, j])) @ model.query)
                  + beta * math.log(float(scores[0, j])) for j in range(3)]
        expected = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(w.numpy(), expected, atol=1e-6)


def test_larger_prior_moves_weight_to_that_entity() -> None:
    model = _model()
    vectors = torch.randn(1, 3, H)
    mask = torch.ones(1, 3)
    with torch.no_grad():
        w0 = model.attention(vectors, torch.tensor([[0.2, 0.4, 0.4]]), mask)[0]
        w1 = model.attention(vectors, torch.tensor([[0.6, 0.2, 0.2]]), mask)[0]
        assert w1[0] > w0[0]
        no_prior = _model(prior=0.0)
        # β = softplus(-30) ≈ 0: the scores no longer matter
        a = no_prior.attention(vectors, torch.tensor([[0.2, 0.4, 0.4]]), mask)
        b = no_prior.attention(vectors, torch.tensor([[0.6, 0.2, 0.2]]), mask)
        assert torch.allclose(a, b, atol=1e-6)


def test_split_tower_equals_the_whole_tower() -> None:
    """Per-entity features + per-user pooling (what serving runs) = `encode`."""
    model = _model()
    vectors = torch.randn(3, 5, H)
    scores = torch.rand(3, 5)
    mask = torch.tensor([[1.0] * 5, [1.0, 1.0, 0.0, 0.0, 0.0], [0.0] * 5])  # one empty
    with torch.no_grad():
        whole = model.encode(vectors, scores, mask)
        feats = model.entity_features(vectors)
        assert feats.shape == (3, 5, model.feature_dim)
        assert torch.allclose(model.encode_features(feats, scores, mask), whole, atol=1e-5)


def test_empty_mekb_gives_zero_weights_and_a_finite_user() -> None:
    model = _model()
    with torch.no_grad():
        w = model.attention(torch.randn(1, 2, H), torch.zeros(1, 2), torch.zeros(1, 2))
        u = model.encode(torch.randn(1, 2, H), torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.all(w == 0) and torch.isfinite(u).all()


def test_mekb_scores_match_mekb_scoring() -> None:
    ents = {
        "i1": [LinkedEntity("p:1", "one", 0.1), LinkedEntity("c:x", "x", 0.3)],
        "i2": [LinkedEntity("p:2", "two", 0.1), LinkedEntity("c:x", "x", 0.3)],
        "i3": [LinkedEntity("p:3", "three", 0.1), LinkedEntity("c:y", "y", 0.3)],
    }
    train = [Interaction(u, i, "d", None) for u, items in
             {"u1": ["i1", "i2", "i3"], "u2": ["i1"], "u3": ["i3", "i2"]}.items()
             for i in items]
    row = {e: n for n, e in enumerate(["p:1", "p:2", "p:3", "c:x", "c:y"])}
    index = MeKBIndex(ents, train, row, ["d"])
    df = {"p:1": 2, "p:2": 2, "p:3": 2, "c:x": 3, "c:y": 2}
    for user, items in (("u1", ["i1", "i2", "i3"]), ("u3", ["i3", "i2"])):
        counts: dict[str, float] = {}
        for i in items:
            for e in ents[i]:
                counts[e.entity_id] = counts.get(e.entity_id, 0.0) + e.weight
        expected = {s.entity_id: s.score for s in mekb_scores(counts, df, 3)}
        rows, scores = index.mekb(user)
        inv = {v: k for k, v in row.items()}
        got = {inv[int(r)]: float(s) for r, s in zip(rows, scores, strict=True)}
        assert got.keys() == {e for e, v in expected.items() if v > 0} | {
            e for e in expected if e in got}
        for e, v in got.items():
            assert v == pytest.approx(expected[e], abs=1e-6)
        assert list(scores) == sorted(scores, reverse=True)
    # hiding u1's i3 removes p:3 and c:y from the MeKB
    rows, _ = index.mekb_excluding("u1", {"i3"})
    assert {int(r) for r in rows} == {row["p:1"], row["p:2"], row["c:x"]}
    r, s, m = pad([index.mekb("u2"), index.mekb("u1")])
    assert r.shape == s.shape == m.shape and m.sum(1).tolist() == [2, 5]


def _tiny_encoder(path: Path, seed: int) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from trainer.model import default_encoder

    tok = AutoTokenizer.from_pretrained(default_encoder())
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_vector_cache_computes_once_and_recomputes_on_encoder_change(tmp_path: Path) -> None:
    enc_a = _tiny_encoder(tmp_path / "a", 0)
    enc_b = _tiny_encoder(tmp_path / "b", 1)
    cache_dir = tmp_path / "cache"
    ids, titles = ["e1", "e2", "e3"], ["Star Wars", "Harrison Ford", "Drama"]

    first = TitleEncoder(str(enc_a))
    cache = EntityVectorCache(cache_dir, first)
    v1 = cache.get(ids, titles)
    assert first.calls == 3 and v1.shape == (3, 16)
    assert np.allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    assert np.allclose(cache.get(ids[:2], titles[:2]), v1[:2])
    assert first.calls == 3  # nothing re-encoded in-process

    again = TitleEncoder(str(enc_a))  # a new process, same encoder: read from disk
    v2 = EntityVectorCache(cache_dir, again).get(ids, titles)
    assert again.calls == 0 and np.array_equal(v1, v2)
    assert again.fingerprint == first.fingerprint

    other = TitleEncoder(str(enc_b))  # a changed encoder: every vector recomputed
    assert other.fingerprint != first.fingerprint
    v3 = EntityVectorCache(cache_dir, other).get(ids, titles)
    assert other.calls == 3 and not np.allclose(v3, v1)

    retitled = TitleEncoder(str(enc_a))  # a changed title: that entity only
    v4 = EntityVectorCache(cache_dir, retitled).get(ids, ["Star Wars", "H. Ford", "Drama"])
    assert retitled.calls == 1
    assert np.array_equal(v4[[0, 2]], v1[[0, 2]]) and not np.allclose(v4[1], v1[1])


def test_save_load_roundtrip_and_kinds(tmp_path: Path) -> None:
    model = _model()
    kind = get_kind("entitygraph")
    kind.save(model, tmp_path / "m")
    assert kind_of(tmp_path / "m") == "entitygraph"
    loaded = get_kind(kind_of(tmp_path / "m")).load(tmp_path / "m").eval()
    mekbs = [[MeKBEntity("e1", "t", 0.7), MeKBEntity("e4", "t", 0.3)],
             [MeKBEntity("unknown", "t", 1.0)], []]
    assert torch.allclose(kind.encode(model, mekbs), kind.encode(loaded, mekbs))
    assert loaded.item_ids == model.item_ids and loaded.entity_ids == model.entity_ids
    # the unknown-only MeKB embeds like the empty one (no title vectors attached)
    out = kind.encode(loaded, mekbs)
    assert torch.allclose(out[1], out[2])
    assert set(kind_names()) >= {"embedme", "entitygraph"}
    with pytest.raises(KindError, match="unknown model kind 'nope'"):
        get_kind("nope")
    (tmp_path / "old").mkdir()  # an EmbedMe directory from before kinds: no "kind"
    (tmp_path / "old" / "config.json").write_text(json.dumps({"dim": 8}))
    assert kind_of(tmp_path / "old") == "embedme"


def test_onnx_parity_dynamic_batch_and_length(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _model(n_entities=50)
    kind = get_kind("entitygraph")
    fields = kind.export_onnx(model, tmp_path)
    assert fields["model_kind"] == "entitygraph" and fields["n_entities"] == 50
    assert kind.parity(model, tmp_path) < 1e-5
    session = ort.InferenceSession(str(tmp_path / "user_tower.onnx"),
                                   providers=["CPUExecutionProvider"])
    for batch, length in ((1, 1), (7, 33)):
        v = np.random.default_rng(batch).standard_normal((batch, length, H)).astype(np.float32)
        s = np.full((batch, length), 1.0 / length, np.float32)
        m = np.ones((batch, length), np.float32)
        m[0, length // 2 + 1:] = 0.0
        with torch.no_grad():
            f = model.entity_features(torch.from_numpy(v)).numpy()
            ref = model.encode(torch.from_numpy(v), torch.from_numpy(s), torch.from_numpy(m))
        out = session.run(None, {"entity_features": f, "entity_scores": s, "entity_mask": m})[0]
        assert out.shape == (batch, 4)
        assert np.abs(out - ref.numpy()).max() < 1e-5


def test_kg_tying_save_load_and_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EntityGraph(EntityGraphConfig(dim=4, hidden=16, attn_dim=8, kg_dim=4), H)
    model.add_entities([f"e{i}" for i in range(4)], np.eye(4, H, dtype=np.float32))
    model.add_items(["a"], ["x"])
    model.attach_kg(5, 2, {"e0": 1, "e2": 3})
    with torch.no_grad():
        assert torch.equal(model.entity_vectors(), model.entity_table)  # P starts at 0
        torch.nn.init.normal_(model.kg_proj.weight)
        tied = model.entity_vectors()
    assert not torch.allclose(tied[0], model.entity_table[0])
    assert torch.equal(tied[1], model.entity_table[1])  # e1 is not linked
    assert float(model.transe.loss(torch.tensor([[1, 0, 3], [3, 1, 2]]), 1.0,
                                   torch.Generator().manual_seed(0))) >= 0.0
    model.add_entities(["late"], np.ones((1, H), np.float32))  # after attach: unlinked
    assert model.entity_kg_row.tolist() == [1, -1, 3, -1, -1]
    model.eval().save(tmp_path / "m")
    loaded = EntityGraph.load(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.allclose(loaded.entity_vectors(), model.entity_vectors())
    kind = get_kind("entitygraph")
    kind.export_onnx(loaded, tmp_path / "b")
    assert kind.parity(loaded, tmp_path / "b") < 1e-5


def test_item_bias_is_one_more_dot_product_dimension(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EntityGraph(EntityGraphConfig(dim=4, hidden=8, attn_dim=4, item_bias=True), H)
    model.add_entities(["e0", "e1"], np.eye(2, H, dtype=np.float32))
    model.add_items(["a", "b"], ["x", "x"])
    assert model.item_table.shape == (2, 5) and torch.all(model.item_table[:, -1] == 0)
    with torch.no_grad():
        model.item_table[:, -1] = torch.tensor([0.5, -0.5])
        user = model.encode_rows(torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]),
                                 torch.ones(1, 2))
        scores = user @ model.item_table.t()
    assert user.shape == (1, 5) and float(user[0, -1]) == 1.0
    assert torch.allclose(scores, user[:, :4] @ model.item_table[:, :4].t()
                          + torch.tensor([[0.5, -0.5]]))
    kind = get_kind("entitygraph")
    assert kind.export_onnx(model.eval(), tmp_path)["dim"] == 5
    assert kind.parity(model, tmp_path) < 1e-5


def test_onnx_user_tower_skips_unknown_entities_and_keeps_order(tmp_path: Path) -> None:
    from trainer.entitygraph.export import OnnxUserTower

    model = _model(n_entities=10)
    get_kind("entitygraph").export_onnx(model, tmp_path)
    tower = OnnxUserTower(tmp_path)
    rows, scores, mask = tower.rows([[("e3", 0.6), ("zz", 0.3), ("e1", 0.1)], [], [("e0", 1.0)]])
    assert rows.shape == (3, 2) and mask.tolist() == [[1, 1], [0, 0], [1, 0]]
    assert rows[0].tolist() == [3, 1] and scores[0].tolist() == pytest.approx([0.6, 0.1])
    assert rows[1].tolist() == [tower.pad_row] * 2
    mekbs = [[(f"e{j}", 1.0 / (i + 1)) for j in range(i + 1)] for i in range(9)][::-1]
    together = tower.encode(mekbs, bucket=2)  # groups by size, answers in input order
    alone = np.concatenate([tower.encode([m]) for m in mekbs])
    assert np.allclose(together, alone, atol=1e-5)


def test_training_with_kg_tying_and_multi_domain_on_a_small_world() -> None:
    """build_model ties product entities to the scenario's KG nodes; a few training
    steps with the TransE loss run and move the tie away from zero."""
    from trainer.data.scenario import ScenarioConfig, build_scenario
    from trainer.data.synthetic import WorldConfig, generate_world
    from trainer.entitygraph.train import EntityGraphTrainConfig, build_model, train

    world = generate_world(WorldConfig(seed=0, users=80, items_per_domain=30, kg="kg"))
    sc = build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=2))
    assert sc.kg is not None
    model = build_model(EntityGraphConfig(dim=8, hidden=16, kg_dim=8, pretrained=False), sc)
    assert model.transe is not None and int((model.entity_kg_row >= 0).sum()) > 0
    result = train(model, sc, EntityGraphTrainConfig(epochs=1, batch_users=16, kg_batch=64,
                                                      progress=False), max_steps=4)
    assert result.steps == 4 and result.examples > 0
    assert all(math.isfinite(x) for x in result.losses)
    assert float(model.kg_proj.weight.abs().sum()) > 0  # the tie was trained
