"""`mekb models pin/unpin/list/activate` as commands on a real registry directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mekb.registry import Registry
from tests.unit.test_registry import make_bundle


def models(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    env["MEKB_DATA_DIR"] = str(data)
    return subprocess.run([sys.executable, "-m", "mekb.cli.main", "models", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_pin_list_activate_unpin(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "data" / "registry")
    for n in (1, 2, 3):
        reg.publish(make_bundle(tmp_path / f"b{n}", bytes([n])), version=f"v{n}",
                    extra={"created_at": 1000.0 + n,
                           **({"model_kind": "entitygraph"} if n == 3 else {})})
    pinned = models(tmp_path / "data", "pin", "v1", "--no-announce")
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == "pinned: v1 (now active, was -)"
    assert reg.promote("v3") is False  # the trainer's publication: held

    listed = models(tmp_path / "data", "list")
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("* v1 ") and " pinned " in lines[0]
    # id, version kind, model kind (a bundle without one is published as embedme)
    assert [line.lstrip("* ").split()[:3] for line in lines[:3]] == [
        ["v1", "full", "embedme"], ["v2", "full", "embedme"], ["v3", "full", "entitygraph"]]
    assert lines[1].startswith("  v2 ") and " - " in lines[1]
    assert lines[2].startswith("  v3 ") and " held " in lines[2]
    assert lines[3].startswith("pinned to v1 since ") and "(pin)" in lines[3]

    moved = models(tmp_path / "data", "activate", "v2", "--no-announce")
    assert moved.stdout.strip() == "active: v2 (pinned)" and reg.pinned().version == "v2"  # type: ignore[union-attr]
    missing = models(tmp_path / "data", "pin", "nope", "--no-announce")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"mekb: error: no model version 'nope' in {reg.versions_dir}"]

    assert models(tmp_path / "data", "unpin").stdout.strip() == "unpinned v2"
    assert models(tmp_path / "data", "unpin").stdout.strip() == "not pinned"
    assert "pinned to" not in models(tmp_path / "data", "list").stdout
    assert reg.promote("v3") is True
