"""Experience replay in the continuous trainer: taken at once while the trainer keeps up,
owed while it is behind the stream (new examples first), capped, paid when it catches
up and before a publication, kept across a restart."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_online_loop import Harness, make_settings, stream, tiny_encoder  # noqa: F401
from trainer.online.loop import Record, decode


def steps(h: Harness) -> float:
    return h.metric("mekb_trainer_steps_total")


def test_replay_is_owed_while_behind_and_paid_when_caught_up(
    tmp_path: Path, tiny_encoder: str  # noqa: F811
) -> None:
    # (steps of the batch size while behind too: catch-up steps have their own test)
    h = Harness(make_settings(tmp_path, tiny_encoder, trainer_replay=2,
                              trainer_replay_defer_lag=100, trainer_catchup_batch=8,
                              trainer_holdout_fraction=0.0))
    t = h.trainer
    t.startup()
    # keeping up (40 waiting <= 100): every step on new examples takes its 2 replays
    t.set_backlog(40)
    assert not t.behind
    t.process(stream(16))
    assert h.metric("mekb_trainer_examples_total", outcome="trained") == 16
    # two steps of 8, each followed by 2 replayed steps of 8
    assert h.metric("mekb_trainer_examples_total", outcome="replayed") == 2 * 2 * 8
    assert t.replay_owed == 0

    # behind (500 waiting > 100): new examples only, the replay is owed
    t.set_backlog(500)
    before = h.metric("mekb_trainer_examples_total", outcome="replayed")
    t.process(stream(16, start=16))
    assert h.metric("mekb_trainer_examples_total", outcome="replayed") == before
    assert t.replay_owed == 4 and h.metric("mekb_trainer_replay_owed_steps") == 4

    # caught up: the owed steps are taken (batches from the whole recent window)
    t.set_backlog(0)
    stepped = steps(h)
    for _ in range(4):  # each empty poll pays for up to REPLAY_SLICE_S (>= 1 step)
        t.process([])
        if not t.replay_owed:
            break
    assert t.replay_owed == 0 and h.metric("mekb_trainer_replay_owed_steps") == 0
    assert steps(h) == stepped  # replay steps are not steps on new examples
    assert h.metric("mekb_trainer_examples_total", outcome="replayed") == before + 4 * 8


def test_owed_replay_is_capped_and_the_rest_counted_as_forgone(
    tmp_path: Path, tiny_encoder: str  # noqa: F811
) -> None:
    h = Harness(make_settings(tmp_path, tiny_encoder, trainer_replay=3,
                              trainer_replay_defer_lag=1, trainer_recent_window=16,
                              trainer_holdout_fraction=0.0))
    t = h.trainer
    t.startup()
    t.set_backlog(1000)
    t.process(stream(80))  # 10 steps; the window holds 16 = 2 batches: cap 3 x 2
    assert t.replay_owed == 6
    owed_total = 10 * 3
    assert h.metric("mekb_trainer_examples_total", outcome="replay_forgone") == \
        (owed_total - 6) * 8


def test_owed_replay_is_paid_before_a_publication_and_survives_a_restart(
    tmp_path: Path, tiny_encoder: str  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, tiny_encoder, trainer_replay=1,
                             trainer_replay_defer_lag=10, trainer_holdout_fraction=0.0)
    h = Harness(settings)
    t = h.trainer
    t.startup()
    t.set_backlog(1000)
    t.process(stream(32))
    assert t.replay_owed == 4
    t.checkpoint()
    again = Harness(settings)  # restarted from the checkpoint: still owed
    assert again.trainer.replay_owed == 4
    # a publication while behind does not wait for the replay; caught up, it takes it
    again.trainer.set_backlog(1000)
    again.trainer.publish_full(0.0)
    assert again.trainer.replay_owed == 4
    again.trainer.set_backlog(0)
    again.trainer.publish_full(1.0)
    assert again.trainer.replay_owed == 0


def test_records_decoded_ahead_train_as_records_decoded_in_place(
    tmp_path: Path, tiny_encoder: str  # noqa: F811
) -> None:
    """The runner decodes the next poll while the previous one trains: same outcome."""
    recs = stream(24) + [Record(0, 99, b"not json"), Record(1, 99, None)]
    results = []
    for ahead in (False, True):
        h = Harness(make_settings(tmp_path / str(ahead), tiny_encoder))
        h.trainer.startup()
        h.trainer.process([decode(r) for r in recs] if ahead else recs)
        h.trainer.process([])
        results.append((h.metric("mekb_trainer_examples_total", outcome="trained"),
                        h.metric("mekb_trainer_examples_total", outcome="invalid"),
                        h.metric("mekb_trainer_loss"), dict(h.trainer.offsets)))
    assert results[0] == results[1]
    assert results[0][1] == 2  # the bad record and the key-less empty one


def test_behind_steps_take_the_catchup_batch_and_owe_replay_per_batch_share(
    tmp_path: Path, tiny_encoder: str  # noqa: F811
) -> None:
    h = Harness(make_settings(tmp_path, tiny_encoder, trainer_replay=1,
                              trainer_replay_defer_lag=100, trainer_catchup_batch=24,
                              trainer_recent_window=512, trainer_holdout_fraction=0.0))
    t = h.trainer
    t.startup()
    assert (t.batch_size, t.catchup_batch) == (8, 24)
    t.set_backlog(500)  # behind: steps of 24, each owing the replay of three batches of 8
    t.process(stream(48))
    assert steps(h) == 2
    assert h.metric("mekb_trainer_examples_total", outcome="trained") == 48
    assert t.replay_owed == 2 * 3
    # caught up: steps of 8 again, replayed at once; the owed replay is paid in batches of 8
    t.set_backlog(0)
    t.process(stream(16, start=48))
    t.pay_replay()  # (process pays in slices of REPLAY_SLICE_S)
    assert steps(h) == 4
    assert t.replay_owed == 0
    assert h.metric("mekb_trainer_examples_total", outcome="replayed") == (2 + 6) * 8


def test_catchup_batch_defaults_to_the_kinds_factor(tmp_path: Path, tiny_encoder: str  # noqa: F811
                                                    ) -> None:
    from trainer.online.kinds import EntityGraphOnline, online_kind, trainer_kind

    settings = make_settings(tmp_path, tiny_encoder)
    kind = online_kind(trainer_kind(settings), settings)
    h = Harness(settings)
    assert h.trainer.catchup_batch == 8 * kind.catchup_factor
    assert EntityGraphOnline.catchup_factor > 1
