"""What kind of storage a URL names, how to show it, and whether an error means it is out of reach."""

from __future__ import annotations

import errno
import logging
import threading
from enum import StrEnum

from autoquant.errors import ConfigError

logger = logging.getLogger(__name__)


class StorageKind(StrEnum):
    """The kinds of storage a study can live in."""

    SQLITE = "sqlite"  # embedded, one process (the output folder's lock)
    POSTGRESQL = "postgresql"  # shared by any number of processes
    JOURNAL = "journal"  # an Optuna journal file on a filesystem the machines share

    @property
    def shared(self) -> bool:
        """Whether several processes may serve a study stored here."""
        return self is not StorageKind.SQLITE


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
    if storage_kind(url) == StorageKind.JOURNAL:
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


def wait_for_preload() -> None:
    """Let the preloading thread finish first: two threads importing SQLAlchemy at once see each
    other's half-initialised modules."""
    if _PRELOAD is not None:
        _PRELOAD.join()


def storage_kind(url: str) -> StorageKind:
    """The kind of storage a URL or path names.

    Raises:
        ConfigError: Another kind of database.
    """
    if "://" not in url and url.endswith((".log", ".journal")):
        return StorageKind.JOURNAL
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme == "sqlite":
        return StorageKind.SQLITE
    if scheme in ("postgresql", "postgres"):
        return StorageKind.POSTGRESQL
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


def outage_reason(exc: BaseException) -> str:
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = " ".join(str(root).split())
    return f"{type(root).__name__}: {text[:200]}"
