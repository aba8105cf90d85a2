"""Several ``autoquant worker`` processes on one study, against a real PostgreSQL server that the
fixture starts in a temporary folder (README: "Many machines"). In CI the server must be there:
the tests fail rather than skip when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import DIGITS, ROOT, small_digits_study
from tests.postgres import PostgresServer, binaries

pytestmark = pytest.mark.integration  # every test here starts a process


def _server() -> PostgresServer:
    found = binaries()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("no PostgreSQL binaries (initdb) on this machine")
    server = PostgresServer(found)
    server.start()
    return server


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the module's tests."""
    server = _server()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> str:
    """One database for the module's tests (Optuna creates its tables once); each test has its own
    study in it, named after the test."""
    return postgres.database()


@pytest.fixture()
def name(request: pytest.FixtureRequest) -> str:
    """The test's study name."""
    return request.node.name.removeprefix("test_")[:60]


_CONVS = [n.name for n in onnx.load(DIGITS / "model.onnx").graph.node if n.op_type == "Conv"]


def _config(
    tmp_path: Path, url: str, study: str, file: str = "study.yaml", out: str = "out", **sections: dict
) -> Path:
    """A small digits study ``study`` on ``url`` (full mode, 2 sampled trials, heartbeat 1 s, grace 5 s)."""
    defaults = {
        "calibration": {"cache_dir": str(tmp_path / "cache")},
        "search": {
            "mode": "full",
            "n_trials": 2,
            "accept_int8_decay": 0.005,
            "data_limit": 2,
            "study_name": study,
            "ignore_layer_list": _CONVS,  # a per-layer scale search over a few tensors: seconds less
        },
        "storage": {"url": url, "heartbeat_interval": 1, "grace_period": 5, "retry_timeout": 20},
        "tracking": {"enabled": False},
        "output": {"directory": str(tmp_path / out)},
    }
    return small_digits_study(tmp_path / file, defaults, sections)


def _start(command: str, config: Path) -> subprocess.Popen:
    """The command in a new process; its output goes to files (a pipe nobody reads while it runs
    would stop it once the pipe is full)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    logs = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
    process = subprocess.Popen(
        [sys.executable, "-m", "autoquant", command, str(config)],
        stdout=logs[0],
        stderr=logs[1],
        text=True,
        env=env,
        cwd=config.parent,
    )
    process.logs = logs  # type: ignore[attr-defined]
    return process


def _output(process: subprocess.Popen) -> tuple[str, str]:
    """What the process wrote so far: stdout, stderr."""
    texts = []
    for log in process.logs:  # type: ignore[attr-defined]
        log.seek(0)
        texts.append(log.read())
    return texts[0], texts[1]


def _finish(process: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"process {process.pid} did not finish:\n{_output(process)[1][-3000:]}"
        ) from None
    stdout, stderr = _output(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def _study(url: str, name: str) -> optuna.Study:
    """The study as stored now (one storage per URL, reconnecting after a server restart)."""
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    return optuna.load_study(study_name=name, storage=_STORAGES[url])


def _cli(*args: str) -> subprocess.CompletedProcess:
    """A command in this process, with Click's runner."""
    from typer.testing import CliRunner

    from autoquant.cli._app import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def _keys(study: optuna.Study, *states: TrialState) -> list[str]:
    return [t.user_attrs.get("key", "") for t in study.get_trials(states=states or None)]


def test_three_workers_share_a_full_study(database: str, name: str, tmp_path: Path) -> None:
    mlflow_uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    config = _config(tmp_path, database, name, tracking={"enabled": True, "uri": mlflow_uri})
    workers = [_start("worker", config) for _ in range(3)]  # at the same moment
    results = [_finish(w) for w in workers]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    study = _study(database, name)
    trials = study.trials
    assert [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)] == []
    keys = Counter(t.user_attrs["key"] for t in trials)
    assert max(keys.values()) == 1, keys  # every piece of work ran once
    strategies = [t for t in trials if t.user_attrs["key"].startswith("strategy:")]
    assert len(strategies) == 6
    assert len({tuple(sorted(t.params.items())) for t in strategies}) == 6  # no duplicate parameter set
    assert sum(k.startswith("sampled:") for k in keys) == 2  # the trial budget, whoever sampled
    assert keys["scales"] == 1
    owners = {t.system_attrs["autoquant:owner"]["pid"] for t in trials}
    assert owners <= {w.pid for w in workers} and len(owners) >= 2  # the work was shared
    # The outputs hold the study's best trial, written by whichever worker found it.
    summary = json.loads((tmp_path / "out" / "study_summary.json").read_text())
    held = json.loads((tmp_path / "out" / "best_trial.json").read_text())
    assert held["trial"] == summary["best"]["number"]
    assert summary["completed_trials"] == len([t for t in trials if t.state == TrialState.COMPLETE])
    # MLflow: one parent run, closed by the last worker; one child run per trial, whoever ran it.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == sorted(t.number for t in trials)
    assert {int(r.data.tags["worker_pid"]) for r in children} == owners
    # autoquant status names the workers: host, pid, last heartbeat, current trial.
    status = _cli("status", str(config))
    assert status.returncode == 0, status.stderr[-2000:]
    assert "processes serving the study (seen in the last 10 minutes" in status.stdout
    rows = [[c.strip() for c in line.split("│")] for line in status.stdout.splitlines() if "│ worker" in line]
    assert sorted(int(r[2]) for r in rows) == sorted(w.pid for w in workers), status.stdout
    assert {r[6] for r in rows} == {"done"} and all(r[4].endswith("s ago") for r in rows), status.stdout


def _wait_for(condition, timeout: float, what: str, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_worker_s_trial_is_failed_and_run_again(database: str, name: str, tmp_path: Path) -> None:
    config = _config(tmp_path, database, name, search={"n_trials": 1})
    doomed, survivor = _start("worker", config), _start("worker", config)
    running: list[optuna.trial.FrozenTrial] = []

    def doomed_runs_a_trial() -> bool:
        try:
            trials = _study(database, name).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # no study yet
            return False
        running[:] = [t for t in trials if t.system_attrs.get("autoquant:owner", {}).get("pid") == doomed.pid]
        return bool(running)

    try:
        try:
            _wait_for(doomed_runs_a_trial, 120, "the first worker to run a trial")
        except AssertionError:
            for p in (doomed, survivor):
                p.logs[1].seek(0)  # type: ignore[attr-defined]
                print(p.pid, p.poll(), p.logs[1].read()[-3000:])  # type: ignore[attr-defined]
            raise
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        result = _finish(survivor)
    finally:
        for p in (doomed, survivor):
            if p.poll() is None:
                p.kill()
    assert result.returncode == 0, result.stderr[-3000:]
    study = _study(database, name)
    killed = study.trials[running[0].number]
    assert killed.state == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].user_attrs["key"] == killed.user_attrs["key"]
    assert killed.params.items() <= retried[0].params.items()  # what it had chosen, it keeps
    assert retried[0].system_attrs["autoquant:owner"]["pid"] == survivor.pid
    # The study completed: every phase ran, the killed trial's work once more.
    keys = Counter(_keys(study, TrialState.COMPLETE, TrialState.PRUNED))
    assert max(keys.values()) == 1 and keys["scales"] == 1
    assert (
        sum(k.startswith("strategy:") for k in keys) == 6 and sum(k.startswith("sampled:") for k in keys) == 1
    )
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == [killed.number]


def test_in_fast_mode_the_others_stop_after_their_trial(database: str, name: str, tmp_path: Path) -> None:
    config = _config(tmp_path, database, name, search={"mode": "fast", "accept_int8_decay": 1.0})
    workers = [_start("worker", config) for _ in range(3)]
    results = [_finish(w) for w in workers]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    study = _study(database, name)
    first_pass = min(t.datetime_complete for t in study.trials if t.user_attrs.get("within_budget"))
    # No trial started once the budget was met: each worker finished the trial it held, if any.
    assert all(t.datetime_start <= first_pass for t in study.trials)
    per_worker = Counter(t.system_attrs["autoquant:owner"]["pid"] for t in study.trials)
    assert max(per_worker.values()) == 1 and len(study.trials) <= 3
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert all("done: trial" in r.stderr for r in results)  # each read the study's state


def test_a_worker_with_another_calibration_set_is_refused(database: str, name: str, tmp_path: Path) -> None:
    from autoquant.config import load_config
    from autoquant.search import tune

    fast = {"mode": "fast", "accept_int8_decay": 1.0}
    tune(load_config(_config(tmp_path, database, name, search=fast)), command="worker")
    other = tmp_path / "other_calib.npy"
    np.save(other, np.load(DIGITS / "data" / "calib.npy")[::-1])  # the same images in another order
    config = _config(
        tmp_path,
        database,
        name,
        file="other.yaml",
        out="other_out",
        calibration={"source": str(other)},
        search=fast,
    )
    refused = _cli("worker", str(config))
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("autoquant: error:")]
    assert len(errors) == 1, refused.stderr
    assert f"study '{name}' in {database} was started with another calibration data" in errors[0]
    assert not (tmp_path / "other_out").exists()  # nothing written
    assert len(list((tmp_path / "cache").glob("stats-*"))) == 1  # refused before its statistics pass
    assert len(_study(database, name).trials) == 1


def test_a_worker_needs_a_shared_storage(tmp_path: Path) -> None:
    result = _cli("worker", str(_config(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", "s")))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("autoquant: error:")]
    assert len(errors) == 1 and "`autoquant worker` needs a storage that several processes share" in errors[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "study.db").exists()


def test_two_workers_on_a_journal_file(tmp_path: Path) -> None:
    """A journal file on a (here local) filesystem: the lock file beside it serialises the claims."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = tmp_path / "shared" / "study.log"
    config = _config(tmp_path, str(journal), "journal", search={"n_trials": 1})
    workers = [_start("worker", config) for _ in range(2)]
    for result in [_finish(w) for w in workers]:
        assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="journal", storage=JournalStorage(JournalFileBackend(str(journal))))
    keys = Counter(_keys(study))
    assert max(keys.values()) == 1 and keys["scales"] == 1
    assert (
        sum(k.startswith("strategy:") for k in keys) == 6 and sum(k.startswith("sampled:") for k in keys) == 1
    )
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sorted(p.name for p in journal.parent.iterdir()) == ["study.log"]  # no lock left behind


def test_a_database_that_goes_away(postgres: PostgresServer, database: str, tmp_path: Path) -> None:
    """The database stops for two seconds: the worker waits and goes on. Then it stops for good:
    the worker says so in one line and ends with status 2; no completed trial is lost. (The last
    test of the module: it stops the module's server, and starts it again.)"""
    url = database
    # The outage is 2 s plus the crash recovery at restart, which a loaded machine slows: 12 s of retries.
    config = _config(tmp_path, url, "gone", search={"n_trials": 40}, storage={"retry_timeout": 12})
    worker = _start("worker", config)
    try:
        _wait_for(lambda: len(_finished(url)) >= 4, 120, "four finished trials", every=0.2)
        postgres.stop("immediate")
        time.sleep(2.0)
        postgres.start()
        before = len(_finished(url))
        try:
            _wait_for(
                lambda: len(_finished(url)) >= before + 2, 60, "two more trials after the restart", every=0.2
            )
        except AssertionError as exc:  # what the worker said
            worker.kill()
            worker.wait()
            raise AssertionError(f"{exc}; the worker's log:\n{_output(worker)[1][-3000:]}") from None
        completed = {t.number for t in _finished(url) if t.state == TrialState.COMPLETE}
        postgres.stop("immediate")
        result = _finish(worker, timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        postgres.start()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "does not answer" in result.stderr and "answers again" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("autoquant: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "the database has not answered for 12 s" in errors[0] and "run the same command" in errors[0]
    assert completed <= {t.number for t in _finished(url) if t.state == TrialState.COMPLETE}  # none lost


def _finished(url: str) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of the study ``gone``, or [] when it is not there yet."""
    try:
        return [t for t in _study(url, "gone").trials if t.state.is_finished()]
    except KeyError:
        return []
