"""Fixtures shared by the integration tests (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.synthetic import alias_rows


@pytest.fixture
def alias(tmp_path: Path) -> Path:
    """A real alias table of the synthetic world's entities (streams/synthetic.py).
    test_stream_training_quality.py overrides it with its own world's table."""
    from linker.alias_table import AliasTable

    path = tmp_path / "alias"
    AliasTable.build(path, alias_rows(120)).close()
    return path
