"""Shared fixtures: one real embedded broker per test session, unique names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mekb.broker import EmbeddedBroker
from mekb.settings import Settings

# Tests never read the developer's MEKB_* environment.
for _name in list(os.environ):
    if _name.startswith("MEKB_"):
        del os.environ[_name]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture
def unique() -> str:
    """A unique suffix for topic and group names of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(broker: EmbeddedBroker, unique: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker, with topics private to this test."""
    return Settings(
        bootstrap_servers=broker.bootstrap_servers,
        broker_flavor="tansu",
        topic_prefix=f"t{unique}-",
        partitions=2,
        data_dir=tmp_path / "data",
    )
