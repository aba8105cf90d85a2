"""The embedded SQLite study database after a fault (autoquant/storage/_sqlite.py): made whole or
not at all, made again when it cannot be opened and holds no completed trial, kept (with one
error naming it) when it holds completed trials; and the output folder's half-written leftovers."""

from __future__ import annotations

import errno
import logging
import sqlite3
from pathlib import Path

import optuna
import pytest

from autoquant.config import StorageConfig
from autoquant.errors import StorageError
from autoquant.search import serving
from autoquant.storage import open_storage
from tests.helpers import digits_variant

SETTINGS = StorageConfig()


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _study_with(path: Path, completed: int) -> None:
    """A real Optuna study database at ``path`` with ``completed`` completed trials and one running."""
    storage = optuna.storages.RDBStorage(_url(path))
    study = optuna.create_study(storage=storage, study_name="s")
    for value in range(completed):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=float(value)))
    study.ask()
    storage.engine.dispose()


def _break_schema(path: Path) -> None:
    """What Optuna refuses to open: a schema revision it does not know."""
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'unknown-revision'")


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_new_database_is_made_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out" / "study.db"
    made = optuna.storages.RDBStorage

    def full_disk(url: str, **kwargs: object) -> optuna.storages.RDBStorage:
        made(url, **kwargs)  # the tables are made in the temporary file, then the disk is full
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(optuna.storages, "RDBStorage", full_disk)
    with pytest.raises(
        StorageError, match=r"the study database sqlite:///.*study.db: database or disk is full"
    ):
        open_storage(_url(path), SETTINGS)
    assert _listing(path.parent) == []  # no study.db, no temporary file
    monkeypatch.setattr(optuna.storages, "RDBStorage", made)
    storage = open_storage(_url(path), SETTINGS)
    assert optuna.get_all_study_summaries(storage.backend) == []
    assert _listing(path.parent) == ["study.db"]


def test_a_temporary_database_left_by_a_kill_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    (tmp_path / ".study.db.k1ll3d.tmp").write_bytes(b"SQLite format 3\x00 half")
    (tmp_path / ".study.db.k1ll3d.tmp-journal").write_bytes(b"half")
    open_storage(_url(path), SETTINGS)
    assert _listing(tmp_path) == ["study.db"]


def test_a_half_made_database_without_results_is_made_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "study.db"
    _study_with(path, completed=0)  # a running trial only: nothing to lose
    _break_schema(path)
    with pytest.raises(RuntimeError):  # Optuna alone cannot open it
        optuna.storages.RDBStorage(_url(path))
    with caplog.at_level(logging.INFO, logger="autoquant"):
        storage = open_storage(_url(path), SETTINGS)
    assert optuna.get_all_study_summaries(storage.backend) == []
    lines = [r.getMessage() for r in caplog.records if "study database" in r.getMessage()]
    assert lines == [
        f"the study database {path} could not be opened and holds no completed trial (left half-made "
        "by an interrupted run?); made again"
    ]


def test_a_database_with_results_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    _study_with(path, completed=2)
    _break_schema(path)
    before = path.read_bytes()
    with pytest.raises(StorageError) as raised:
        open_storage(_url(path), SETTINGS)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: cannot open the study database (")
    assert "it holds 2 completed trials, so it is kept" in message
    assert "move it away to start the study over" in message
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    path.write_bytes(b"these are not the bytes of a SQLite database" * 100)
    with pytest.raises(StorageError, match="it cannot be read, so it is kept"):
        open_storage(_url(path), SETTINGS)
    assert path.read_bytes().startswith(b"these are not")


def test_a_full_disk_on_an_existing_database_is_not_a_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "study.db"
    _study_with(path, completed=0)

    def full_disk(url: str, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", url)

    monkeypatch.setattr(optuna.storages, "RDBStorage", full_disk)
    with pytest.raises(StorageError, match="no space left on the device"):
        open_storage(_url(path), SETTINGS)
    with sqlite3.connect(path) as connection:  # not deleted: the study is still in it
        assert connection.execute("SELECT study_name FROM studies").fetchall() == [("s",)]


def test_half_written_outputs_are_removed_under_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = digits_variant(tmp_path)
    out = config.output.directory
    (out / ".staging-k1ll3d").mkdir(parents=True)
    (out / ".staging-k1ll3d" / "model.int8.onnx").write_bytes(b"half a model")
    (out / ".best_trial.json.x1y2.tmp").write_text("{")
    (out / "model.int8.onnx").write_bytes(b"a whole model")
    with caplog.at_level(logging.INFO, logger="autoquant"), serving(config):
        assert _listing(out) == [".autoquant.lock", "model.int8.onnx"]
    assert _listing(out) == ["model.int8.onnx"]
    lines = [r.getMessage() for r in caplog.records if "interrupted run" in r.getMessage()]
    assert lines == [
        f"{out}: removed 2 half-written file(s) of an interrupted run (.best_trial.json.x1y2.tmp, .staging-k1ll3d)"
    ]


def test_a_half_written_journal_record_is_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk or a kill in the middle of an append: the half-written last record is cut off
    (one line), the whole ones are kept, and the journal takes new records and reads again."""
    path = tmp_path / "study.log"
    storage = open_storage(str(path), SETTINGS)
    study = optuna.create_study(storage=storage.backend, study_name="s")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    whole = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"op_code":6,"worker_id":"x","study_id":0,"da')  # cut by the full disk
    with caplog.at_level(logging.INFO, logger="autoquant"):
        storage = open_storage(str(path), SETTINGS)
    assert path.stat().st_size == whole
    lines = [r.getMessage() for r in caplog.records if "half-written record" in r.getMessage()]
    assert lines == [
        f"the study journal {path} ended in a half-written record (an interrupted write); cut off its 45 bytes"
    ]
    study = optuna.load_study(study_name="s", storage=storage.backend)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=2.0))
    again = optuna.load_study(study_name="s", storage=open_storage(str(path), SETTINGS).backend)
    assert [t.value for t in again.trials] == [1.0, 2.0]
    assert not list(tmp_path.glob("*.lock"))  # the journal's lock is released


def test_a_full_disk_in_a_storage_step_names_the_database(tmp_path: Path) -> None:
    """Optuna wraps SQLite's "database or disk is full" in its own error: the step's error is one
    line naming the study database."""
    import sqlalchemy.exc

    path = tmp_path / "study.db"
    storage = open_storage(_url(path), SETTINGS)

    def full_disk() -> None:
        try:
            raise sqlalchemy.exc.OperationalError(
                "COMMIT", {}, sqlite3.OperationalError("database or disk is full")
            )
        except sqlalchemy.exc.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from exc

    with pytest.raises(StorageError) as raised:
        storage.call(full_disk)
    assert str(raised.value) == (
        f"the study database sqlite:///{path}: database or disk is full; no space left on the device; "
        "free some space or choose another --output"
    )
    with pytest.raises(KeyError):  # anything else passes unchanged
        storage.call(lambda: {}["missing"])
