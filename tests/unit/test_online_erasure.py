"""The continuous trainer at a deleted user's tombstone on training-examples: the
user's queued examples (pending, replay window, gate hold-out) are dropped, also
from the next checkpoint; examples of the user's new MeKB after it are kept."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_online_loop import (  # noqa: F401 - the fixture
    Harness,
    example,
    make_settings,
    stream,
    tiny_encoder,
)
from trainer.online.loop import Record


def held(h: Harness) -> list[str]:
    t = h.trainer
    return [ex.user_id for ex in [*t.pending, *t.recent, *t.holdout]]


def test_tombstone_drops_the_users_queued_examples(
    tmp_path: Path, tiny_encoder: str  # noqa: F811
) -> None:
    h = Harness(make_settings(tmp_path, tiny_encoder, trainer_batch_size=16,
                              trainer_publish_interval_s=10_000))
    h.trainer.process(stream(40))  # trained: in the replay window (and the hold-out)
    h.trainer.ingest(stream(8, start=40))  # queued, not trained yet
    assert held(h).count("u3") >= 4 and h.trainer.pending and h.trainer.holdout
    others = len(held(h)) - held(h).count("u3")
    h.trainer.process([Record(1, 100, None, b"u3"), Record(1, 101, example(3, "s0", ["Mars"]))])
    users = held(h)
    assert users.count("u3") == 1  # only the example after the tombstone
    assert len(users) - 1 == others
    assert h.metric("mekb_trainer_examples_total", outcome="erased") >= 4
    assert h.trainer.offsets["t-training-examples:1"] == 102
    h.trainer.checkpoint_and_offsets()
    again = Harness(h.settings)  # the checkpoint no longer holds them either
    kept = [ex.user_id for ex in [*again.trainer.recent, *again.trainer.holdout]]
    assert kept.count("u3") <= 1 and len(kept) >= others - len(h.trainer.pending)
