"""The processes serving a study: their records in the study, and the heartbeat of a running trial."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import optuna

from autoquant.names import WORKER_PREFIX
from autoquant.storage._locking import process_alive
from autoquant.storage._storage import StudyStorage

logger = logging.getLogger(__name__)


class WorkerState(StrEnum):
    """What a process serving the study is doing, as its record says."""

    STARTING = "starting"
    RUNNING = "running"  # a trial (the record names it)
    IDLE = "idle"  # between two trials
    WAITING = "waiting"  # for other processes' trials (stored with the reason: "waiting: ...")
    FINISHING = "finishing"  # out of its loop, writing the summary: still counted as serving
    DONE = "done"


def _stored_state(state: WorkerState, reason: str | None) -> str:
    return f"{state}: {reason}" if reason else str(state)


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
    state: WorkerState = WorkerState.STARTING
    reason: str | None = None  # why it waits

    @property
    def attr(self) -> str:
        suffix = f":{self.slot}" if self.slot else ""
        return f"{WORKER_PREFIX}{self.host}:{self.pid}:{int(self.started)}{suffix}"

    @property
    def identity(self) -> tuple:
        """What tells this record from the others of the study."""
        return (self.host, self.pid, self.started, self.slot)

    def update(
        self, state: WorkerState, trial: int | None = None, key: str | None = None, reason: str | None = None
    ) -> None:
        """Set what this process does and store the record with the time now (retried while a
        shared storage does not answer)."""
        self.state, self.trial, self.key, self.reason = state, trial, key, reason
        self.storage.call(self.store)

    def store(self) -> None:
        """Store the record with the time now, once (the heartbeat thread's call)."""
        value = {
            "host": self.host,
            "pid": self.pid,
            "command": self.command,
            "started": self.started,
            "slot": self.slot,
            "seen": time.time(),
            "trial": self.trial,
            "key": self.key,
            "state": _stored_state(self.state, self.reason),
        }
        self.storage.set_system_attr(self.study, self.attr, value)

    def leave(self) -> bool:
        """Mark this process done; True when no other process still serves the study (the last
        out closes the MLflow parent run). A process is gone once :func:`serving` says so."""
        return self.storage.call(self._leave)

    def _leave(self) -> bool:
        with self.storage.lock(self.study.study_name):
            self.update(WorkerState.DONE)
            grace = self.storage.settings.grace_period
            others = [
                w
                for w in workers(self.storage, self.study)
                if (w.get("host"), w.get("pid"), w.get("started"), w.get("slot", 0)) != self.identity
                and serving(w, grace)
            ]
            return not others


def serving(record: dict[str, Any], grace: float, now: float | None = None) -> bool:
    """Whether the process of a worker ``record`` still serves the study: not done, seen within
    ``grace`` seconds, and, on this host, still running (a killed process's record stays fresh
    for up to ``grace`` seconds, but its pid is gone or reused by a later process)."""
    now = time.time() if now is None else now
    if record.get("state") == WorkerState.DONE or now - float(record.get("seen", 0.0)) >= grace:
        return False
    if record.get("host") != socket.gethostname():
        return True  # its pid cannot be checked: its heartbeat decides
    pid, started = record.get("pid"), record.get("started")
    return isinstance(pid, int) and process_alive(pid, float(started) if started is not None else None)


def workers(storage: StudyStorage, study: optuna.Study) -> list[dict[str, Any]]:
    """The processes that served the study, most recently seen first."""
    found = [v for k, v in storage.system_attrs(study).items() if k.startswith(WORKER_PREFIX)]
    return sorted(found, key=lambda w: -float(w.get("seen", 0.0)))


class Heartbeat:
    """While a trial runs: its Optuna heartbeat and this process's record, every interval, from a
    background thread (the main thread is busy with the trial); with ``trial`` None, the record
    only (a process finishing the study: the others must not take it for gone meanwhile). Errors
    are left to the main thread, which meets them at its next storage call."""

    def __init__(self, storage: StudyStorage, worker: WorkerRecord, trial: optuna.Trial | None) -> None:
        self.storage, self.worker, self.trial = storage, worker, trial
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="autoquant-heartbeat", daemon=True)

    def _beat(self) -> None:
        interval = self.storage.heartbeat_interval or self.storage.settings.heartbeat_interval
        while not self._stop.wait(interval):
            try:
                if self.trial is not None:
                    self.storage.record_heartbeat(self.trial)
                self.worker.store()
            except Exception as exc:  # the main thread retries or reports the outage
                logger.debug(
                    "heartbeat of trial %s not recorded: %s", getattr(self.trial, "number", None), exc
                )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
