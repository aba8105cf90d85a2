"""Optuna storages behind one adapter (SQLite, journal file, PostgreSQL), with retries,
worker records, heartbeats and the output-folder lock.
"""

from autoquant.storage._kinds import StorageKind, display_url, is_outage, preload, storage_kind
from autoquant.storage._locking import output_lock, process_alive
from autoquant.storage._storage import StudyStorage, open_storage, retried
from autoquant.storage._workers import Heartbeat, WorkerRecord, WorkerState, serving, workers

__all__ = [
    "Heartbeat",
    "StorageKind",
    "StudyStorage",
    "WorkerRecord",
    "WorkerState",
    "display_url",
    "is_outage",
    "open_storage",
    "output_lock",
    "preload",
    "process_alive",
    "retried",
    "serving",
    "storage_kind",
    "workers",
]
