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
import errno
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
from autoquant.errors import ConfigError, StorageError
from autoquant.names import TRIAL_OWNER, WORKER_PREFIX

logger = logging.getLogger(__name__)

T = TypeVar("T")

EMBEDDED, POSTGRESQL, JOURNAL = "sqlite", "postgresql", "journal"

_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"autoquant|optuna schema").digest()[:8], "big", signed=True)

#: A running trial's heartbeat in the embedded study, which one process owns: it checks for stale
#: trials only between its own trials, so any trial it finds silent was left by a dead process.
EMBEDDED_HEARTBEAT = (1, 2)

_NETWORK_ERRNOS = {
    errno.EIO,
    errno.ESTALE,
    errno.ETIMEDOUT,
    errno.ENOTCONN,
    errno.EHOSTDOWN,
    errno.ENETUNREACH,
}


def preload(url: str) -> None:
    """Import a database storage's modules (SQLAlchemy, Alembic, Optuna's models: two seconds or
    more) on a daemon thread, while the study's set-up computes in the main one."""
    if storage_kind(url) == JOURNAL:
        return

    def load() -> None:
        try:
            import alembic.command
            import alembic.migration  # noqa: F401
            import optuna.storages._rdb.models  # noqa: F401
        except Exception as exc:  # the storage's own import reports it in the main thread
            logger.debug("preloading the storage modules failed: %s", exc)

    global _PRELOAD
    _PRELOAD = threading.Thread(target=load, name="autoquant-preload", daemon=True)
    _PRELOAD.start()


_PRELOAD: threading.Thread | None = None


def _wait_for_preload() -> None:
    """Let the preloading thread finish first: two threads importing SQLAlchemy at once see each
    other's half-initialised modules."""
    if _PRELOAD is not None:
        _PRELOAD.join()


def storage_kind(url: str) -> str:
    """``sqlite``, ``postgresql`` or ``journal`` for a storage URL or path.

    Raises:
        ConfigError: Another kind of database.
    """
    if "://" not in url and url.endswith((".log", ".journal")):
        return JOURNAL
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme == "sqlite":
        return EMBEDDED
    if scheme in ("postgresql", "postgres"):
        return POSTGRESQL
    raise ConfigError(
        f"storage.url {display_url(url)!r}: use postgresql+psycopg://user:password@host/db or a journal "
        "file (/shared/folder/study.log) for several workers, or sqlite:///study.db for one process"
    )


def display_url(url: str) -> str:
    """The URL with its password, if any, masked (for messages, summaries and status)."""
    if "://" not in url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def is_outage(exc: BaseException) -> bool:
    """Whether an exception (or one in its cause chain) means the storage cannot be reached now:
    a lost or refused database connection, or a network filesystem that does not answer."""
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            sqlalchemy.exc.OperationalError
            | sqlalchemy.exc.InterfaceError
            | sqlalchemy.exc.DisconnectionError
            | sqlalchemy.exc.TimeoutError
            | ConnectionError,
        ):
            return True
        if isinstance(current, OSError) and current.errno in _NETWORK_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def _retry_callback(max_retry: int | None) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's callback that queues a stale trial again (renamed in Optuna 4.9)."""
    cls = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        or optuna.storages.RetryFailedTrialCallback
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental
        return cls(max_retry=max_retry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class StudyStorage:
    """An opened Optuna storage with what the processes sharing it need.

    Attributes:
        url: The storage URL or journal path.
        kind: ``sqlite`` (one process), ``postgresql`` or ``journal``.
        backend: The Optuna storage.
        settings: ``storage`` of the config (heartbeat, grace period, retries).
    """

    url: str
    kind: str
    backend: optuna.storages.BaseStorage
    settings: StorageConfig
    _guard: threading.RLock = field(default_factory=threading.RLock)
    _depth: int = 0
    _ids: dict[str, int] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """Whether several processes may serve the study (not the embedded SQLite)."""
        return self.kind != EMBEDDED

    @property
    def heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats, None where the storage has none (journal files)."""
        if self.kind == JOURNAL:
            return None
        return EMBEDDED_HEARTBEAT[0] if self.kind == EMBEDDED else self.settings.heartbeat_interval

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
        if self.kind == POSTGRESQL:
            import sqlalchemy

            key = int.from_bytes(
                hashlib.sha256(f"autoquant|{study_name}".encode()).digest()[:8], "big", signed=True
            )
            engine = self.backend.engine  # type: ignore[attr-defined]
            with engine.connect() as connection, connection.begin():
                connection.execute(sqlalchemy.text("SET LOCAL lock_timeout = '120s'"))
                connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                yield  # released when the transaction ends, or when the connection dies
        elif self.kind == JOURNAL:
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

        ``step`` must be safe to repeat: it reads what it needs from the storage each time.

        Raises:
            StorageError: The storage still does not answer after ``storage.retry_timeout`` seconds.
        """
        deadline: float | None = None
        delay = 0.5
        while True:
            try:
                result = step(*args, **kwargs)
            except Exception as exc:
                if not (self.shared and is_outage(exc)):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.settings.retry_timeout
                    logger.warning(
                        "the study's storage %s does not answer (%s); retrying for up to %.0f s",
                        display_url(self.url),
                        _reason(exc),
                        self.settings.retry_timeout,
                    )
                if now >= deadline:
                    raise StorageError(
                        f"storage.url {display_url(self.url)}: the database has not answered for "
                        f"{self.settings.retry_timeout:.0f} s ({_reason(exc)}); the completed trials are "
                        "stored in it: start it again, then run the same command to go on"
                    ) from exc
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 8.0)
                continue
            if deadline is not None:
                logger.info("the study's storage answers again")
            return result

    # --- dead trials ---------------------------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat of a running trial (nothing for journal files)."""
        if self.heartbeat_interval is not None:
            self.backend.record_heartbeat(trial_id)  # type: ignore[attr-defined]

    def claim(self, trial_id: int) -> None:
        """Mark a trial this process has just taken: its owner, and its first heartbeat at once, so
        that it is found stale even if the process dies before its heartbeat thread ticks."""
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.backend.set_trial_system_attr(trial_id, TRIAL_OWNER, owner)
        self.record_heartbeat(trial_id)

    def fail_dead_trials(self, study: optuna.Study) -> None:
        """Fail the running trials whose process is dead, and queue them again (Optuna's retry
        callback): by their heartbeat, or for journal files by their owner's pid on this host."""
        if self.heartbeat_interval is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            return
        host = socket.gethostname()
        retry = _retry_callback(self.settings.max_retry)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.system_attrs.get(TRIAL_OWNER) or {}
            if owner.get("host") == host and not _alive(int(owner.get("pid", 0))):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if self.backend.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                        logger.info(
                            "trial %d: its process %s is gone; it runs again", trial.number, owner["pid"]
                        )
                        retry(study, trial)

    def requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Queue a failed trial again with its key and parameters (a stop or a lost connection)."""
        _retry_callback(None)(study, trial)

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


def _reason(exc: BaseException) -> str:
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = " ".join(str(root).split())
    return f"{type(root).__name__}: {text[:200]}"


def open_storage(url: str, settings: StorageConfig) -> StudyStorage:
    """Open the storage at ``url``: an RDB storage with Optuna's heartbeat, or a journal file.

    Raises:
        ConfigError: The URL names an unsupported database, or its driver is not installed.
        StorageError: A shared database does not answer within ``storage.retry_timeout``.
    """
    _wait_for_preload()
    kind = storage_kind(url)
    if kind == JOURNAL:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return StudyStorage(url, kind, JournalStorage(JournalFileBackend(url)), settings)
    if kind == EMBEDDED:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        interval, grace = EMBEDDED_HEARTBEAT
    else:
        interval, grace = settings.heartbeat_interval, settings.grace_period
    probe = StudyStorage(url, kind, None, settings)  # type: ignore[arg-type]

    def create() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is marked experimental
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True} if kind == POSTGRESQL else None,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=_retry_callback(settings.max_retry),
            )

    def connect() -> optuna.storages.RDBStorage:
        if kind != POSTGRESQL:
            return create()
        import sqlalchemy

        # Optuna creates its tables when they are missing: processes starting together on a new
        # database would race (a duplicate type or table); one at a time, under an advisory lock.
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection, connection.begin():
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK}
                )
                return create()
        finally:
            engine.dispose()

    try:
        backend = probe.call(connect)
    except StorageError:
        raise
    except ImportError:
        raise ConfigError(
            f"storage.url {display_url(url)}: the PostgreSQL driver is missing; "
            'install it with `pip install "autoquant[postgres]"`'
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"storage.url {display_url(url)!r}: cannot open the Optuna storage ({type(exc).__name__}: {exc})"
        ) from None
    return StudyStorage(url, kind, backend, settings)


@dataclass
class WorkerRecord:
    """This process, as the other processes and ``autoquant status`` see it: a study system
    attribute with its host, pid, command, current trial and when it was last seen."""

    storage: StudyStorage
    study: optuna.Study
    command: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    slot: int = 0  # the server's drivers share a process: one record each
    trial: int | None = None
    key: str | None = None
    state: str = "starting"

    @property
    def attr(self) -> str:
        suffix = f":{self.slot}" if self.slot else ""
        return f"{WORKER_PREFIX}{self.host}:{self.pid}:{int(self.started)}{suffix}"

    @property
    def identity(self) -> tuple:
        """What tells this record from the others of the study."""
        return (self.host, self.pid, self.started, self.slot)

    def update(self, **changes: Any) -> None:
        """Change ``trial``, ``key`` or ``state`` and store the record with the time now."""
        for name, value in changes.items():
            setattr(self, name, value)
        value = {
            "host": self.host,
            "pid": self.pid,
            "command": self.command,
            "started": self.started,
            "slot": self.slot,
            "seen": time.time(),
            "trial": self.trial,
            "key": self.key,
            "state": self.state,
        }
        self.storage.set_system_attr(self.study, self.attr, value)


def workers(storage: StudyStorage, study: optuna.Study) -> list[dict[str, Any]]:
    """The processes that served the study, most recently seen first."""
    found = [v for k, v in storage.system_attrs(study).items() if k.startswith(WORKER_PREFIX)]
    return sorted(found, key=lambda w: -float(w.get("seen", 0.0)))


class Heartbeat:
    """While a trial runs: its Optuna heartbeat and this process's record, every interval, from a
    background thread (the main thread is busy with the trial); with ``trial_id`` None, the record
    only (a process finishing the study: the others must not take it for gone meanwhile). Errors
    are left to the main thread, which meets them at its next storage call."""

    def __init__(self, storage: StudyStorage, worker: WorkerRecord, trial_id: int | None) -> None:
        self.storage, self.worker, self.trial_id = storage, worker, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="autoquant-heartbeat", daemon=True)

    def _beat(self) -> None:
        interval = self.storage.heartbeat_interval or self.storage.settings.heartbeat_interval
        while not self._stop.wait(interval):
            try:
                if self.trial_id is not None:
                    self.storage.record_heartbeat(self.trial_id)
                self.worker.update()
            except Exception as exc:  # the main thread retries or reports the outage
                logger.debug("heartbeat of trial id %s not recorded: %s", self.trial_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
