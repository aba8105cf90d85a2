"""The embedded SQLite study database, made so that a fault cannot leave it half-made.

* A new database is made in a temporary file beside it (``.study.db.*.tmp``) and renamed into
  place once Optuna's schema is in it: a full disk or a kill while the tables are being made
  leaves no ``study.db``, only a temporary file that the next run removes.
* A database that Optuna cannot open (left half-made by an older version, or damaged) is made
  again, with one line saying so, when it holds no completed trial; one that holds completed
  trials is never deleted: the error names the file and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from autoquant.errors import StorageError, one_line, write_fault

logger = logging.getLogger(__name__)

T = TypeVar("T")

_COMPANIONS = ("-journal", "-wal", "-shm")

#: SQLite's answers that mean "another process holds the database this instant", not a damaged one.
_BUSY = ("database is locked", "database table is locked", "database is busy")


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL."""
    return Path(url.removeprefix("sqlite:///"))


def _remove(path: Path) -> None:
    for leftover in (path, *(path.with_name(path.name + suffix) for suffix in _COMPANIONS)):
        leftover.unlink(missing_ok=True)


def clear_temporaries(path: Path) -> None:
    """Remove the temporary databases that an interrupted creation of ``path`` left beside it."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def create_atomically(path: Path, create: Callable[[str], T]) -> None:
    """Make a new SQLite database at ``path`` whole or not at all: ``create(url)`` makes the
    schema in a temporary file beside it, which is then renamed into place.

    ``create`` returns a storage whose engine is disposed of here (``.engine.dispose()``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_temporaries(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    staged = Path(name)
    try:
        made = create(f"sqlite:///{staged}")
        engine = getattr(made, "engine", None)
        if engine is not None:
            engine.dispose()
        if not path.exists():  # another process may have made it meanwhile: keep that one
            os.replace(staged, path)
    finally:
        _remove(staged)


def completed_trials(path: Path) -> int | None:
    """How many completed trials the SQLite study database at ``path`` holds (0 if it has no
    trials table yet), or None if it cannot be read at all."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = {n for (n,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "trials" not in tables:
                return 0
            (count,) = connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()
            return int(count)
    except sqlite3.Error:
        return None


def open_or_rebuild(path: Path, create: Callable[[str], T]) -> T:
    """Open the SQLite study database at ``path`` with ``create(url)``, making it atomically when it
    does not exist; one that cannot be opened is made again when it holds no completed trial.

    Raises:
        StorageError: The database cannot be opened and holds completed trials, or cannot be read.
        Exception: A write fault (a full disk, a read-only folder) or a busy database, unchanged.
    """
    url = f"sqlite:///{path}"
    if not path.exists():
        create_atomically(path, create)
        return create(url)
    try:
        return create(url)
    except Exception as exc:
        if write_fault(exc) is not None or any(b in str(exc).lower() for b in _BUSY):
            raise
        reason = one_line(exc, limit=200)
    completed = completed_trials(path)
    if completed == 0:
        _remove(path)
        logger.info(
            "the study database %s could not be opened and holds no completed trial (left half-made "
            "by an interrupted run?); made again",
            path,
        )
        create_atomically(path, create)
        return create(url)
    held = (
        "it cannot be read"
        if completed is None
        else f"it holds {completed} completed trial{'' if completed == 1 else 's'}"
    )
    raise StorageError(
        f"{path}: cannot open the study database ({reason}); {held}, so it is kept: restore it from "
        "a copy, or move it away to start the study over"
    )
