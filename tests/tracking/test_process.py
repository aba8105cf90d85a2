"""The MLflow logging process's store checks (autoquant/tracking/_process.py), on stores made by hand."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from autoquant.tracking._process import half_made


def test_a_store_with_a_leftover_migration_table_is_half_made(tmp_path: Path) -> None:
    """The state the issue met: ``_alembic_tmp_tags`` left by a migration; a complete store with
    runs, an empty file and a file that is no database are not half-made."""
    db = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.executescript(
            "CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES ('x');"
            "CREATE TABLE runs (run_uuid TEXT); CREATE TABLE _alembic_tmp_tags (key TEXT);"
        )
    assert half_made(db)
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("INSERT INTO runs VALUES ('a run')")
    assert not half_made(db)  # runs come after the migrations: never deleted
    (tmp_path / "empty.db").touch()
    (tmp_path / "text.db").write_text("not a database " * 100)
    assert not half_made(tmp_path / "empty.db") and not half_made(tmp_path / "text.db")
    assert not half_made(tmp_path / "missing.db")


@pytest.mark.integration  # importing mlflow runs `uname -p`
def test_a_store_at_an_older_schema_version_without_runs_is_half_made(tmp_path: Path) -> None:
    """A migration cut short between two steps leaves no temporary table, only an older version."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    db = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.executescript(
            "CREATE TABLE alembic_version (version_num TEXT); CREATE TABLE runs (x TEXT);"
        )
    assert half_made(db)  # no version yet
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")  # MLflow's first
    assert half_made(db)
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (_get_latest_schema_revision(),))
    assert not half_made(db)
