"""Losses, optimiser/schedule, optimiser checkpoints and a tiny real training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trainer.data.scenario import ScenarioConfig, build_scenario
from trainer.data.synthetic import WorldConfig, generate_world
from trainer.losses import multi_positive_softmax, sampled_softmax_logq
from trainer.model import EmbedMe, EmbedMeConfig
from trainer.offline import (
    TrainConfig,
    UserExamples,
    ensure_items,
    load_optimizer,
    read_progress,
    save_optimizer,
    train,
)
from trainer.optim import cosine_with_warmup, make_optimizer


def test_multi_positive_softmax_matches_manual() -> None:
    logits = torch.tensor([[1.0, 2.0, float("-inf"), 0.5], [0.0, 0.0, float("-inf"), 3.0]])
    positives = torch.tensor([[0, 3], [3, 0]])
    mask = torch.tensor([[True, True], [True, False]])  # second row: padding → row 0
    logp = torch.log_softmax(logits, -1)
    want = (-(logp[0, 0] + logp[0, 3]) / 2 - logp[1, 3]) / 2
    got = multi_positive_softmax(logits, positives, mask)
    assert torch.isfinite(got) and torch.allclose(got, want)
    # padding pointing at an out-of-domain (-inf) row must not poison the loss
    positives[1, 1] = 2
    assert torch.allclose(multi_positive_softmax(logits, positives, mask), want)


def test_sampled_softmax_logq_estimates_full_softmax() -> None:
    torch.manual_seed(0)
    table = torch.randn(50, 8)
    user = torch.randn(3, 8)
    pos = torch.tensor([[1], [7], [30]])
    mask = torch.ones(3, 1, dtype=torch.bool)
    rows = torch.arange(50)
    q = torch.linspace(1, 5, 50)
    q = q / q.sum()
    full = multi_positive_softmax(user @ table.t(), pos, mask)
    gen = torch.Generator().manual_seed(0)
    est = torch.stack([
        sampled_softmax_logq(user, table, pos, mask, rows, q, 2000, generator=gen)
        for _ in range(5)
    ]).mean()
    # with log-Q correction the sampled loss approaches the full one (biased low for
    # finite samples; uncorrected sampling by popularity would be off by far more)
    assert abs(float(est) - float(full)) < 0.15


def test_cosine_with_warmup() -> None:
    assert cosine_with_warmup(0, 10, 100) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 10, 100) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 10, 100) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def tiny() -> tuple[EmbedMe, object]:
    world = generate_world(WorldConfig(users=50, items_per_domain=24, seed=1))
    sc = build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=2))
    torch.manual_seed(0)
    return EmbedMe(EmbedMeConfig(dim=16, max_tokens=16)), sc


def test_lamb_optimizer_state_round_trip(tiny, tmp_path: Path) -> None:
    model, sc = tiny
    ensure_items(model, sc)
    opt = make_optimizer(model, item_lr=1e-2)
    assert type(opt).__name__ == "Lamb"
    assert [g["lr"] for g in opt.param_groups][-1] == 1e-2 and opt.param_groups[-1]["adam"]
    # pooler frozen: never handed to the optimiser
    pooler = {id(p) for p in model.encoder.pooler.parameters()}
    assert not any(id(p) in pooler for g in opt.param_groups for p in g["params"])
    before = model.item_table.detach().clone()
    emb = model.encode_texts(["rocket [SEP] galaxy"])
    multi_positive_softmax(model.logits(emb, "movies"), torch.tensor([[0]]),
                           torch.tensor([[True]])).backward()
    opt.step()
    assert not torch.equal(before, model.item_table.detach())
    save_optimizer(opt, tmp_path)
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in tmp_path.iterdir())
    opt2 = make_optimizer(model, item_lr=1e-2)
    load_optimizer(opt2, tmp_path)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    # JSON keeps tuples as lists (betas); values are the same
    assert json.dumps(s1["param_groups"], sort_keys=True) == json.dumps(
        s2["param_groups"], sort_keys=True)
    for pid, st in s1["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, s2["state"][pid][k])


def test_user_views_never_contain_their_positives(tiny) -> None:
    model, sc = tiny
    ensure_items(model, sc)
    data = UserExamples(sc, model, TrainConfig(p_cold=0.5, seed=3))
    n_cold = 0
    for user in data.users:
        text, positives = data.view(user, epoch=0)
        hidden = set(positives)
        counts = data.mekb.counts(user, exclude=hidden)
        # the text is exactly the MeKB without the positives
        assert text == data.mekb.text(user, model.config.max_tokens, exclude=hidden)
        assert positives and set(positives) <= set(data.target_items[user])
        n_cold += len(positives) == len(data.target_items[user])
        assert counts is not None
    assert 0 < n_cold <= len(data.users)
    assert data.view(data.users[0], 0) == data.view(data.users[0], 0)  # deterministic


def _epoch_loss(model: EmbedMe, sc, cfg: TrainConfig) -> float:
    """Loss over the fixed views of epoch 0, without training (eval mode)."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in UserExamples(sc, model, cfg).batches(0):
            enc = model.tokenize(b.texts)
            logits = model(enc["input_ids"], enc["attention_mask"], sc.target)
            total += float(multi_positive_softmax(logits, b.positives, b.pos_mask)) * len(b.users)
            n += len(b.users)
    return total / n


def test_tiny_training_lowers_loss_and_checkpoints(tiny, tmp_path: Path) -> None:
    model, sc = tiny
    cfg = TrainConfig(epochs=3, batch_users=8, accum_steps=2, lr=2e-3, item_lr=5e-2,
                      warmup_epochs=0.5, progress=False, checkpoint_every=2, freeze_layers=5)
    ensure_items(model, sc)
    before = _epoch_loss(model, sc, cfg)
    result = train(model, sc, cfg, checkpoint_dir=tmp_path / "ck")
    after = _epoch_loss(model, sc, cfg)
    assert result.epochs_done == 3 and result.steps > 3
    assert all(math.isfinite(x) for x in result.losses)
    # the same fixed views score better after training (per-step losses are too noisy)
    assert after < before - 0.1, (before, after)
    progress = read_progress(tmp_path / "ck")
    assert progress is not None and progress["epoch"] == 3 and progress["step"] == result.steps
    assert (tmp_path / "ck" / "model" / "model.safetensors").is_file()


def test_resumed_training_repeats_the_uninterrupted_run(tiny, tmp_path: Path) -> None:
    """Stopped after 2 steps and resumed from the checkpoint, EmbedMe ends with the very
    weights of a run that was never stopped: the dropout masks are drawn per batch from
    the seed, not from wherever the process's RNG happened to be."""
    import copy

    model, sc = tiny
    ensure_items(model, sc)
    cfg = TrainConfig(epochs=1, batch_users=8, lr=2e-3, item_lr=5e-2, warmup_epochs=0.5,
                      progress=False, checkpoint_every=100, freeze_layers=5)
    whole, part = copy.deepcopy(model), copy.deepcopy(model)
    train(whole, sc, cfg, max_steps=4)
    train(part, sc, cfg, checkpoint_dir=tmp_path / "ck", max_steps=2)
    torch.manual_seed(12345)  # another process: its RNG is anywhere
    resumed = copy.deepcopy(model)
    result = train(resumed, sc, cfg, checkpoint_dir=tmp_path / "ck", max_steps=4)
    assert result.resumed_from == 2 and result.steps == 4
    want, got = whole.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
