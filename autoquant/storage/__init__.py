"""Optuna storages behind one adapter (SQLite, journal file, PostgreSQL), with retries,
worker records, heartbeats and the output-folder lock.
"""

from autoquant.storage._locking import output_lock, process_alive
from autoquant.storage._storage import (
    Heartbeat,
    StudyStorage,
    WorkerRecord,
    display_url,
    is_outage,
    open_storage,
    preload,
    storage_kind,
    workers,
)

__all__ = [
    "Heartbeat",
    "StudyStorage",
    "WorkerRecord",
    "display_url",
    "is_outage",
    "open_storage",
    "output_lock",
    "preload",
    "process_alive",
    "storage_kind",
    "workers",
]
