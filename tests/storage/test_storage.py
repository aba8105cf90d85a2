"""Storage kinds, retries and the heartbeat settings (autoquant/storage.py), without a server."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy.exc
import yaml

from autoquant.config import StorageConfig, load_config
from autoquant.errors import ConfigError, StorageError
from autoquant.storage import StudyStorage, display_url, is_outage, open_storage, storage_kind
from tests.helpers import digits_variant


def test_storage_kinds() -> None:
    assert storage_kind("sqlite:////tmp/study.db") == "sqlite"
    assert storage_kind("postgresql+psycopg://u:p@host/db") == "postgresql"
    assert storage_kind("/shared/studies/digits.log") == "journal"
    with pytest.raises(ConfigError, match=r"storage.url 'mysql://u:\*\*\*@host/db': use postgresql\+psycopg"):
        storage_kind("mysql://u:secret@host/db")


def test_passwords_are_masked() -> None:
    assert (
        display_url("postgresql+psycopg://user:secret@host:5432/db")
        == "postgresql+psycopg://user:***@host:5432/db"
    )
    assert display_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"


def test_grace_period_must_exceed_the_heartbeat(tmp_path: Path) -> None:
    data = digits_variant(tmp_path).model_dump(mode="json")
    data["storage"] = {"heartbeat_interval": 5, "grace_period": 5}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"grace_period \(5\) must be longer than heartbeat_interval \(5\)"):
        load_config(path)


def _outage() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_outages_are_told_from_other_errors() -> None:
    try:
        raise RuntimeError("the storage failed") from _outage()
    except RuntimeError as exc:
        assert is_outage(exc)
    assert not is_outage(ValueError("a bad value"))


def _shared(retry_timeout: float) -> StudyStorage:
    return StudyStorage(
        "postgresql+psycopg://u:secret@host/db",
        "postgresql",
        None,
        StorageConfig(retry_timeout=retry_timeout),
    )


def test_a_storage_that_answers_again_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def step() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise _outage()
        return "stored"

    with caplog.at_level(logging.INFO, logger="autoquant.storage._storage"):
        assert _shared(30).call(step) == "stored"
    assert len(calls) == 3 and calls[2] - calls[1] > calls[1] - calls[0]  # backoff
    messages = [r.getMessage() for r in caplog.records]
    assert sum("does not answer" in m for m in messages) == 1 and "answers again" in messages[-1]
    assert "secret" not in " ".join(messages)


def test_a_storage_that_stays_down_ends_in_one_clear_error() -> None:
    def step() -> None:
        raise _outage()

    began = time.monotonic()
    with pytest.raises(
        StorageError, match=r"u:\*\*\*@host/db: the database has not answered for 1 s .*run the same command"
    ):
        _shared(1.0).call(step)
    assert 1.0 <= time.monotonic() - began < 3.0


def test_other_errors_are_not_retried() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        _shared(30).call(step)
    assert calls == [1]


def test_sqlite_is_not_retried(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", StorageConfig())
    assert not storage.shared and storage.heartbeat_interval == 1
    with pytest.raises(sqlalchemy.exc.OperationalError):
        storage.call(lambda: (_ for _ in ()).throw(_outage()))


def test_of_the_processes_that_finish_together_exactly_one_is_the_last_out(tmp_path: Path) -> None:
    """Each process leaves its driver loop as "finishing" and becomes "done" only in ``WorkerRecord.leave``,
    under the study lock: two processes that both ended their loop before either got there used to
    both close MLflow's parent run (and collide on its tags)."""
    import optuna

    from autoquant.search import Done, Driver, NullReporter
    from autoquant.storage import WorkerRecord

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", StorageConfig())
    study = optuna.create_study(storage=storage.backend, study_name="together")
    first, second = (WorkerRecord(storage, study, "worker", slot=slot) for slot in (1, 2))

    class Finished(Driver):
        def _claim(self):
            return Done("every phase has run")

    ctx = SimpleNamespace(observers=SimpleNamespace(should_stop=lambda: False, reporter=NullReporter()))
    for worker in (first, second):  # both leave their loop before either writes its summary
        Finished(ctx, study, storage, worker).drive()  # type: ignore[arg-type]
    assert [w.leave() for w in (first, second)] == [False, True]


def test_a_dead_or_silent_process_no_longer_serves_the_study() -> None:
    """A killed ``tune``'s record stays fresh for a grace period: on this host its pid tells that it
    is gone (or reused by a later process); on another host only its heartbeat can."""
    import os
    import socket

    from autoquant.storage import WorkerState, serving

    now, host = time.time(), socket.gethostname()
    alive = {"host": host, "pid": os.getpid(), "started": now - 1, "seen": now - 17, "state": "running: #0"}
    assert serving(alive, grace=30, now=now)
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
    assert not serving({**alive, "pid": dead_pid}, grace=30, now=now)
    assert not serving({**alive, "pid": None}, grace=30, now=now)
    if Path("/proc/self/stat").exists():  # a pid reused by a process started after the record
        assert not serving({**alive, "started": now - 3600 * 24 * 365}, grace=30, now=now)
    elsewhere = {**alive, "host": f"not-{host}", "pid": dead_pid}
    assert serving(elsewhere, grace=30, now=now)  # its pid cannot be checked from here
    assert not serving({**elsewhere, "seen": now - 31}, grace=30, now=now)  # its heartbeat stopped
    assert not serving({**alive, "state": str(WorkerState.DONE)}, grace=30, now=now)


def test_a_step_inside_a_step_is_retried_whole() -> None:
    """An outage inside a nested step ends the outer step, which runs again from its start (a lost
    connection also loses the study lock the outer step may hold)."""
    storage = _shared(30)
    outer, inner = [], []

    def inner_step() -> None:
        inner.append(1)
        if len(inner) == 1:
            raise _outage()

    def outer_step() -> str:
        outer.append(1)
        storage.call(inner_step)
        return "done"

    assert storage.call(outer_step) == "done" and len(outer) == 2 and len(inner) == 2


def test_a_retried_method_is_one_storage_step() -> None:
    from autoquant.storage import retried

    class Steps:
        def __init__(self) -> None:
            self.storage, self.calls = _shared(30), 0

        @retried
        def read(self, value: str) -> str:
            self.calls += 1
            if self.calls == 1:
                raise _outage()
            return value

    steps = Steps()
    assert steps.read("stored") == "stored" and steps.calls == 2


def test_the_optuna_private_attributes_we_use_are_there(tmp_path: Path) -> None:
    """Each private Optuna name autoquant relies on, against the installed Optuna."""
    import optuna

    from autoquant.storage import _optuna

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", StorageConfig())
    study = optuna.create_study(storage=storage.backend, study_name="private")
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    assert (
        _optuna.trial_id(trial)
        == _optuna.trial_id(frozen)
        == storage.backend.get_trial_id_from_study_id_trial_number(
            storage.backend.get_study_id_from_name("private"), trial.number
        )
    )
    assert isinstance(_optuna.rdb_engine(storage.backend), sqlalchemy.engine.Engine)
    callback = _optuna.retry_callback(None)
    storage.claim(trial)  # the owner and a first heartbeat, by the trial's id
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    callback(study, study.get_trials(deepcopy=False)[0])
    assert [t.state for t in study.get_trials(deepcopy=False)][-1] == optuna.trial.TrialState.WAITING


def test_the_sampler_reseeds_its_private_generators() -> None:
    """The resumable sampler seeds Optuna's private generators of TPE and of its start-up sampler."""
    import numpy as np
    import optuna

    from autoquant.search._sharing import sampler

    tpe = sampler(7)
    assert isinstance(tpe._rng.rng, np.random.RandomState)
    assert isinstance(tpe._random_sampler._rng.rng, np.random.RandomState)
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=sampler(7))
        draws.append([study.ask().suggest_float("x", 0, 1) for _ in range(3)])
    assert draws[0] == draws[1]
