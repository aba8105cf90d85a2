"""Where a study lives, and how several processes share it.

* The embedded default, SQLite ``study.db`` in the output folder, serves one process, which holds
  the output folder's lock (:mod:`autoquant.storage`).
* PostgreSQL (``postgresql+psycopg://user:password@host/db``) and a journal file (a path ending in
  ``.log`` or ``.journal``, on a filesystem the machines share) serve any number of ``tune`` and
  ``worker`` processes, which cooperate through the storage alone:

  - a study-wide lock (a PostgreSQL advisory lock; a lock file beside the journal) around the short
    steps that decide what runs next and that write the best-so-far outputs, so that each piece of
    work is claimed by one process and the outputs are written in turn;
  - Optuna's heartbeat: a running trial records one every ``storage.heartbeat_interval`` seconds,
    and a trial silent for ``storage.grace_period`` is failed and queued again, with its key and
    parameters, by Optuna's retry callback. Optuna's journal storage has no heartbeat: there, a
    trial is failed and queued again when the process that runs it, on this host, is gone;
  - retries with backoff while the database does not answer, for ``storage.retry_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoquant.config import StorageConfig
from autoquant.errors import AutoquantError, ConfigError, StorageError, write_fault
from autoquant.names import TRIAL_OWNER
from autoquant.storage._journal import open_journal
from autoquant.storage._kinds import (
    StorageKind,
    display_url,
    is_outage,
    outage_reason,
    storage_kind,
    wait_for_preload,
)
from autoquant.storage._locking import process_alive
from autoquant.storage._optuna import rdb_engine, retry_callback, trial_id
from autoquant.storage._sqlite import open_or_rebuild, sqlite_path

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"autoquant|optuna schema").digest()[:8], "big", signed=True)

#: A running trial's heartbeat in the embedded study, which one process owns: it checks for stale
#: trials only between its own trials, so any trial it finds silent was left by a dead process.
EMBEDDED_HEARTBEAT = (1, 2)


def retried(method: Callable[..., T]) -> Callable[..., T]:
    """Make a method one storage step (:meth:`StudyStorage.call`) of ``self.storage``: run again
    while a shared storage does not answer, so that its callers make plain calls."""

    @functools.wraps(method)
    def step(self: Any, *args: Any, **kwargs: Any) -> T:
        return self.storage.call(method, self, *args, **kwargs)

    return step


@dataclass
class StudyStorage:
    """An opened Optuna storage with what the processes sharing it need.

    Attributes:
        url: The storage URL or journal path.
        kind: SQLite (one process), PostgreSQL or a journal file.
        backend: The Optuna storage.
        settings: ``storage`` of the config (heartbeat, grace period, retries).
    """

    url: str
    kind: StorageKind
    backend: optuna.storages.BaseStorage
    settings: StorageConfig
    _guard: threading.RLock = field(default_factory=threading.RLock)
    _depth: int = 0
    _ids: dict[str, int] = field(default_factory=dict)
    _steps: threading.local = field(default_factory=threading.local)  # this thread's running steps

    def __post_init__(self) -> None:
        self.kind = StorageKind(self.kind)

    @property
    def shared(self) -> bool:
        """Whether several processes may serve the study (not the embedded SQLite)."""
        return self.kind.shared

    @property
    def heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats, None where the storage has none (journal files)."""
        if self.kind == StorageKind.JOURNAL:
            return None
        return EMBEDDED_HEARTBEAT[0] if self.kind == StorageKind.SQLITE else self.settings.heartbeat_interval

    # --- the study lock ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, study_name: str) -> Iterator[None]:
        """Hold the study-wide lock (re-entrant within this process) for a short step."""
        with self._guard:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with self._process_lock(study_name):
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0

    @contextlib.contextmanager
    def _process_lock(self, study_name: str) -> Iterator[None]:
        if self.kind == StorageKind.POSTGRESQL:
            import sqlalchemy

            key = int.from_bytes(
                hashlib.sha256(f"autoquant|{study_name}".encode()).digest()[:8], "big", signed=True
            )
            engine = rdb_engine(self.backend)
            with engine.connect() as connection, connection.begin():
                connection.execute(sqlalchemy.text("SET LOCAL lock_timeout = '120s'"))
                connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                yield  # released when the transaction ends, or when the connection dies
        elif self.kind == StorageKind.JOURNAL:
            from optuna.storages.journal import JournalFileOpenLock

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lock = JournalFileOpenLock(f"{self.url}.autoquant", grace_period=30)
            lock.acquire()  # a lock file left by a killed process is taken over after 30 s
            try:
                yield
            finally:
                with contextlib.suppress(RuntimeError):
                    lock.release()
        else:
            yield  # one process: the output folder's lock

    # --- retries -------------------------------------------------------------------------------
    def call(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``step``; while a shared storage does not answer, run it again with backoff.

        ``step`` must be safe to repeat: it reads what it needs from the storage each time. A step
        called inside another is run once: an outage ends the outer step, which runs again whole
        (a lost connection also loses the study lock that the outer step may hold).

        Raises:
            StorageError: The storage still does not answer after ``storage.retry_timeout`` seconds.
        """
        if getattr(self._steps, "depth", 0):
            return step(*args, **kwargs)
        self._steps.depth = 1
        try:
            return self._retried(step, *args, **kwargs)
        finally:
            self._steps.depth = 0

    def _retried(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline: float | None = None
        delay = 0.5
        while True:
            try:
                result = step(*args, **kwargs)
            except Exception as exc:
                if not (self.shared and is_outage(exc)):
                    named = _named_fault(exc, self.url)
                    if named is not exc:
                        raise named from exc
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.settings.retry_timeout
                    logger.warning(
                        "the study's storage %s does not answer (%s); retrying for up to %.0f s",
                        display_url(self.url),
                        outage_reason(exc),
                        self.settings.retry_timeout,
                    )
                if now >= deadline:
                    raise StorageError(
                        f"storage.url {display_url(self.url)}: the database has not answered for "
                        f"{self.settings.retry_timeout:.0f} s ({outage_reason(exc)}); the completed trials are "
                        "stored in it: start it again, then run the same command to go on"
                    ) from exc
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 8.0)
                continue
            if deadline is not None:
                logger.info("the study's storage answers again")
            return result

    # --- dead trials ---------------------------------------------------------------------------
    def record_heartbeat(self, trial: optuna.Trial) -> None:
        """Record a heartbeat of a running trial (nothing for journal files)."""
        if self.heartbeat_interval is not None:
            self.backend.record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]

    def claim(self, trial: optuna.Trial) -> None:
        """Mark a trial this process has just taken: its owner, and its first heartbeat at once, so
        that it is found stale even if the process dies before its heartbeat thread ticks."""
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.backend.set_trial_system_attr(trial_id(trial), TRIAL_OWNER, owner)
        self.record_heartbeat(trial)

    def fail_dead_trials(self, study: optuna.Study) -> None:
        """Fail the running trials whose process is dead, and queue them again (Optuna's retry
        callback): by their heartbeat, or for journal files by their owner's pid on this host."""
        if self.heartbeat_interval is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            return
        host = socket.gethostname()
        retry = retry_callback(self.settings.max_retry)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.system_attrs.get(TRIAL_OWNER) or {}
            if owner.get("host") == host and not process_alive(int(owner.get("pid", 0))):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if self.backend.set_trial_state_values(trial_id(trial), TrialState.FAIL):
                        logger.info(
                            "trial %d: its process %s is gone; it runs again", trial.number, owner["pid"]
                        )
                        retry(study, trial)

    def requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Queue a failed trial again with its key and parameters (a stop or a lost connection)."""
        retry_callback(None)(study, trial)

    # --- the processes serving the study ----------------------------------------------------------
    def set_system_attr(self, study: optuna.Study, key: str, value: Any) -> None:
        """Set a study system attribute (bookkeeping not meant for users)."""
        self.backend.set_study_system_attr(self._study_id(study), key, value)

    def system_attrs(self, study: optuna.Study) -> dict[str, Any]:
        """The study's system attributes."""
        return self.backend.get_study_system_attrs(self._study_id(study))

    def _study_id(self, study: optuna.Study) -> int:
        if self._ids.get(study.study_name) is None:
            self._ids[study.study_name] = self.backend.get_study_id_from_name(study.study_name)
        return self._ids[study.study_name]


def _named_fault(exc: Exception, url: str) -> Exception:
    """A full disk or a read-only folder met by the database itself, as one error naming the study
    database; any other exception unchanged."""
    import sqlalchemy.exc

    chain: list[BaseException] = [exc]
    while (link := chain[-1].__cause__ or chain[-1].__context__) is not None and link not in chain:
        chain.append(link)  # Optuna wraps SQLAlchemy's error in its StorageInternalError
    database = any(isinstance(e, sqlalchemy.exc.OperationalError) for e in chain)
    fault = write_fault(exc) if database and not isinstance(exc, AutoquantError) else None
    if fault is None:
        return exc
    return StorageError(f"the study database {display_url(url)}: {fault.removeprefix(_UNNAMED)}")


_UNNAMED = "the study or tracking database: "


def _connect_rdb(url: str, kind: StorageKind, settings: StorageConfig) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url`` with its heartbeat (PostgreSQL: under the schema lock)."""
    if kind == StorageKind.SQLITE:
        interval, grace = EMBEDDED_HEARTBEAT
    else:
        interval, grace = settings.heartbeat_interval, settings.grace_period

    def create(at: str = url) -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is marked experimental
            return optuna.storages.RDBStorage(
                at,
                engine_kwargs={"pool_pre_ping": True} if kind == StorageKind.POSTGRESQL else None,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry_callback(settings.max_retry),
            )

    if kind == StorageKind.SQLITE:  # made whole or not at all; a half-made one is made again
        return open_or_rebuild(sqlite_path(url), create)
    if kind != StorageKind.POSTGRESQL:
        return create()
    import sqlalchemy

    # Optuna creates its tables when they are missing: processes starting together on a new
    # database would race (a duplicate type or table); one at a time, under an advisory lock.
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            return create()
    finally:
        engine.dispose()


def open_storage(url: str, settings: StorageConfig) -> StudyStorage:
    """Open the storage at ``url``: an RDB storage with Optuna's heartbeat, or a journal file.

    Raises:
        ConfigError: The URL names an unsupported database, or its driver is not installed.
        StorageError: A shared database does not answer within ``storage.retry_timeout``.
    """
    wait_for_preload()
    kind = storage_kind(url)
    if kind == StorageKind.JOURNAL:
        return StudyStorage(url, kind, open_journal(Path(url)), settings)
    probe = StudyStorage(url, kind, None, settings)  # type: ignore[arg-type]
    try:
        backend = probe.call(_connect_rdb, url, kind, settings)
    except StorageError:
        raise
    except ImportError:
        raise ConfigError(
            f"storage.url {display_url(url)}: the PostgreSQL driver is missing; "
            'install it with `pip install "autoquant[postgres]"`'
        ) from None
    except Exception as exc:
        fault = write_fault(exc)  # a full disk, a read-only folder: one line naming the database
        if fault is not None:
            where = fault.removeprefix(_UNNAMED)
            raise StorageError(f"the study database {display_url(url)}: {where}") from exc
        raise ConfigError(
            f"storage.url {display_url(url)!r}: cannot open the Optuna storage ({type(exc).__name__}: {exc})"
        ) from None
    return StudyStorage(url, kind, backend, settings)
