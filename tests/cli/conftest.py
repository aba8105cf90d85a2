"""Fixtures of the command-line tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture()
def cwd(tmp_path: Path) -> Iterator[Path]:
    """An empty working directory for the commands; it must stay empty."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    yield folder
    assert sorted(folder.iterdir()) == []
