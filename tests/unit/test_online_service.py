from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.online.service import AlreadyRunning, Health, acquire_lock


def test_one_trainer_per_registry(tmp_path: Path) -> None:
    path = tmp_path / "registry" / ".trainer.lock"
    lock = acquire_lock(path)
    with pytest.raises(AlreadyRunning, match="another trainer"):
        acquire_lock(path)
    lock.close()  # (a dead process's lock goes with it)
    acquire_lock(path).close()


def test_healthz_is_ok_only_while_running() -> None:
    health = Health()
    status, body = health.response()
    assert status == 503 and json.loads(body)["status"] == "starting"
    health.phase, health.active_version = "running", "v1"
    status, body = health.response()
    assert status == 200 and json.loads(body)["active_version"] == "v1"
