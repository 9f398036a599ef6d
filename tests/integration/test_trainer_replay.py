"""Deferred experience replay through a real `mekb trainer` process and the real broker:
with a backlog far over MEKB_TRAINER_REPLAY_DEFER_LAG the trainer trains new examples
first and owes their replay (capped at REPLAY passes over the recent window, the rest
counted as forgone), in catch-up steps of 4 x the batch; once it has caught up it pays
what it owes between polls, so the owed-steps gauge returns to 0 with no new record
arriving."""

from __future__ import annotations

from pathlib import Path

import pytest

from mekb.settings import Settings
from tests.integration.streams_helpers import produce
from tests.integration.test_trainer_process import (  # noqa: F401 (fixture)
    Trainer,
    examples,
    tsettings,
    wait_for,
)
from tests.unit.test_online_loop import tiny_encoder  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKLOG, REPLAY, WINDOW, BATCH = 1_200, 2, 64, 8


def test_backlog_trains_new_examples_first_and_pays_the_capped_replay_after(
    tsettings: Settings, tiny_encoder: str, tmp_path: Path,  # noqa: F811
) -> None:
    produce(tsettings, "training-examples", examples(0, BACKLOG))
    trainer = Trainer(tsettings, tmp_path / "trainer.log", MEKB_MODEL_KIND="entitygraph",
                      MEKB_TRAINER_ENCODER=tiny_encoder, MEKB_TRAINER_REPLAY=str(REPLAY),
                      MEKB_TRAINER_REPLAY_DEFER_LAG="100",
                      MEKB_TRAINER_RECENT_WINDOW=str(WINDOW),
                      MEKB_TRAINER_BATCH_SIZE=str(BATCH),
                      MEKB_TRAINER_PUBLISH_EVERY="1000000")
    outcome = 'mekb_trainer_examples_total{{outcome="{}"}}'.format
    try:
        trainer.wait_healthy()

        def consumed() -> float:
            return sum(trainer.metric(outcome(o)) for o in ("trained", "held_out", "invalid"))

        wait_for(lambda: consumed() == BACKLOG
                 and trainer.metric("mekb_trainer_consumer_lag_records") == 0,
                 180, "the backlog consumed", trainer)
        # caught up and nothing new arrives: the owed steps are paid between polls
        wait_for(lambda: trainer.metric("mekb_trainer_replay_owed_steps") == 0, 60,
                 "the owed replay paid", trainer)
        trained = trainer.metric(outcome("trained"))
        replayed = trainer.metric(outcome("replayed"))
        forgone = trainer.metric(outcome("replay_forgone"))
        steps = trainer.metric("mekb_trainer_steps_total")
    finally:
        assert trainer.stop() == 0, trainer.tail()
    assert trained > 0.7 * BACKLOG  # the rest was held out for the gate
    # behind, steps took the catch-up batch (EntityGraph: 4 x BATCH), so far fewer steps
    # than steps of BATCH would have needed
    assert steps < 0.5 * trained / BATCH
    # replay at once would have replayed REPLAY x every trained example; deferred, the
    # backlog's replay was owed, and all but REPLAY passes over the window forgone
    assert forgone > 0
    assert 0 < replayed < trained
    # every step on new examples owed or took REPLAY full batches (a poll's last step
    # may have fewer new examples than a batch): nothing owed was lost unaccounted
    assert REPLAY * trained <= replayed + forgone <= 1.5 * REPLAY * trained
