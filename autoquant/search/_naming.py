"""Where a study is stored and what it is called: the storage URL, the study name, the stored
study if there is one, and the lock held while this process serves it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import optuna

from autoquant.config import StudyConfig
from autoquant.engine import clear_leftovers
from autoquant.names import STUDY_DB_FILE
from autoquant.search._sharing import load_existing
from autoquant.storage import StorageKind, StudyStorage, open_storage, output_lock, storage_kind


def storage_url(config: StudyConfig) -> str:
    """The Optuna storage: ``storage.url`` or SQLite ``study.db`` in the output folder."""
    return config.storage.url or f"sqlite:///{config.output.directory / STUDY_DB_FILE}"


def study_name(config: StudyConfig) -> str:
    """``search.study_name`` or the output folder's name."""
    return config.search.study_name or config.output.directory.name


def existing_study(config: StudyConfig) -> tuple[StudyStorage | None, optuna.Study | None]:
    """The storage (None where opening it would create a file) and the stored study of ``config``
    (None if there is none)."""
    url, name = storage_url(config), study_name(config)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None, None
    if storage_kind(url) == StorageKind.JOURNAL and not Path(url).is_file():
        return None, None
    storage = open_storage(url, config.storage)
    return storage, storage.call(load_existing, storage, name)


@contextlib.contextmanager
def serving(config: StudyConfig) -> Iterator[None]:
    """Held while this process serves the study: the output folder's lock for the embedded SQLite
    storage, which one process serves (the shared storages have the study lock). Under that lock,
    what an interrupted run left half-written in the folder is removed first."""
    if storage_kind(storage_url(config)) != StorageKind.SQLITE:
        yield
        return
    with output_lock(config.output.directory, f"study {study_name(config)!r}"):
        clear_leftovers(config.output.directory)
        yield
