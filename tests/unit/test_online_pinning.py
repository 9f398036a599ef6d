"""A rollback sticks: the continuous trainer keeps training while the registry is
pinned, publishes its candidates inactive (`held`) and never moves ACTIVE; `unpin`
lets the next candidate become active again."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_online_loop import Harness, make_settings, stream, tiny_encoder

__all__ = ["tiny_encoder"]  # the module-scoped fixture, shared with test_online_loop


def test_rollback_pins_and_the_trainer_publishes_inactive_until_unpin(
    tmp_path: Path, tiny_encoder: str
) -> None:
    settings = make_settings(tmp_path, tiny_encoder, trainer_publish_every=30)
    h = Harness(settings)
    h.trainer.startup()
    initial = h.registry.active_version()
    h.trainer.process(stream(40))
    bad = h.registry.active_version()
    assert bad is not None and bad != initial and h.announced == [initial, bad]

    assert h.registry.rollback().version == initial  # the operator's rollback pins
    steps = h.trainer.state.step
    h.trainer.process(stream(40, start=40))
    assert h.trainer.state.step > steps  # training goes on
    held = h.registry.list()[-1]
    assert held.version not in (initial, bad) and held.parent == bad
    assert h.registry.active_version() == initial
    assert held.manifest["held"] == {"pinned_version": initial, "pin_reason": "rollback"}
    assert h.announced == [initial, bad]  # nothing announced for a held version
    assert h.metric("mekb_trainer_active_version_info", version=held.version,
                    kind="full", model_kind="embedme") == 0

    assert h.registry.held_versions() == {held.version}

    # (a restart of the trainer process: tests/integration/test_model_pinning.py)
    assert h.registry.unpin() is not None
    h.trainer.process(stream(40, start=80))
    latest = h.registry.list()[-1]
    assert h.registry.active_version() == latest.version and "held" not in latest.manifest
    assert latest.parent == held.version  # the trainer's lineage went on while held
    assert h.announced == [initial, bad, latest.version]
