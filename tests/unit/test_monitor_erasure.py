"""The drift monitor forgets a deleted user's MeKB text in its probe set, on disk too."""

from __future__ import annotations

import json
from pathlib import Path

from monitoring.monitor import ProbeSet


def test_probe_forgets_a_deleted_user(tmp_path: Path) -> None:
    path = tmp_path / "probe.json"
    probe = ProbeSet(path, size=2)
    probe.offer("a", "Alien [SEP] Ridley Scott")
    probe.offer("b", "Emma [SEP] Jane Austen")
    assert json.loads(path.read_text()) == {"a": "Alien [SEP] Ridley Scott",
                                            "b": "Emma [SEP] Jane Austen"}
    probe.forget("a")
    probe.forget("nobody")
    assert json.loads(path.read_text()) == {"b": "Emma [SEP] Jane Austen"}
    assert ProbeSet(path, size=2).texts == {"b": "Emma [SEP] Jane Austen"}
    probe.offer("c", "Dune")  # the place is taken by the next user
    assert set(json.loads(path.read_text())) == {"b", "c"}
