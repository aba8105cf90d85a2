"""MLflow tracking of a digits study: a local store, a real `mlflow server`, an unreachable server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
from optuna.trial import TrialState

import autoquant
from autoquant.config import load_config
from autoquant.names import STUDY_MLFLOW_PARENT, WORKER_PREFIX
from autoquant.search import storage_url, study_name
from autoquant.storage import WorkerState
from autoquant.tracking._uri import global_tracking_uri, tracking_uri, uri_origin
from tests.helpers import digits_study

pytestmark = pytest.mark.slow


@pytest.fixture()
def digits_config(tmp_path: Path) -> Path:
    """The digits study with tracking on (the suite's other tests turn it off)."""
    return digits_study(tmp_path, "digits.yaml", tracking={"enabled": True})


def _config(digits_config: Path, tmp_path: Path, **tracking: object) -> Path:
    return digits_study(tmp_path, "tracked.yaml", tracking={"enabled": True, **tracking})


def _check_store(uri: str, config_path: Path) -> None:
    import mlflow.onnx
    from mlflow import MlflowClient

    config = load_config(config_path)
    study = optuna.load_study(study_name=study_name(config), storage=storage_url(config))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study.study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs[STUDY_MLFLOW_PARENT]
    parent = parents[0]
    assert parent.data.params["equalize"] == str(config.quantization.equalize)
    children = {int(r.data.tags["trial_number"]): r for r in runs if r not in parents}
    assert sorted(children) == [t.number for t in study.trials]
    for trial in study.trials:
        child = children[trial.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params == {k: str(v) for k, v in trial.params.items()}
        assert child.data.tags["state"] == ("COMPLETE" if trial.state == TrialState.COMPLETE else "FAIL")
        assert child.data.tags["onnxruntime_version"] == ort.__version__
        if trial.state == TrialState.COMPLETE:
            assert child.data.metrics["score"] == pytest.approx(trial.user_attrs["score"])
            assert child.data.metrics["decay"] == pytest.approx(trial.value)
            assert child.data.metrics["fp32_nodes"] == len(trial.user_attrs["fp32_nodes"])
            assert child.data.metrics["latency_ms"] == pytest.approx(trial.user_attrs["latency_ms"])
            assert child.data.metrics["fp32_compute_layers"] == len(trial.user_attrs["fp32_compute_layers"])
            for label, speedup in trial.user_attrs["speedup_by_threads"].items():
                assert child.data.metrics[f"speedup_{label}_threads"] == pytest.approx(speedup)
            assert set(trial.user_attrs["speedup_by_threads"]) == {"1", "default"}
            names = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"calibration_table.json", "fp32_nodes.txt"} <= names
    assert parent.data.metrics["fp32_score"] == pytest.approx(0.994)
    assert {"config.yaml", "study_summary.json", "pareto_front.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    # the Pareto front: a tag on every completed trial's run, a table on the parent
    summary = json.loads((config.output.directory / "study_summary.json").read_text())
    done = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    tagged = {n for n in done if children[n].data.tags.get("pareto") == "true"}
    assert tagged == set(summary["pareto_front"]) and tagged
    assert all(children[n].data.tags["pareto"] == "false" for n in done - tagged)
    downloaded = client.download_artifacts(
        parent.info.run_id, "pareto_front.json", str(config.output.directory.parent)
    )
    table = json.loads(Path(downloaded).read_text())
    assert [row["number"] for row in table] == summary["pareto_front"]
    latency = summary["latency"]
    assert parent.data.tags["cpu_vnni"] == str(latency["cpu_vnni"])
    for label, t in latency["threads"].items():
        assert parent.data.metrics[f"fp32_latency_ms_{label}_threads"] == pytest.approx(t["fp32_ms"])
        assert parent.data.metrics[f"best_speedup_{label}_threads"] == pytest.approx(t["best_speedup"])
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert models, "the best model was not logged"
    with global_tracking_uri(uri):  # mlflow.set_tracking_uri alone would leak MLFLOW_TRACKING_URI
        model = mlflow.onnx.load_model(f"models:/{models[0].model_id}")
    session = ort.InferenceSession(model.SerializeToString())
    x = np.load(Path(config.test.source))[:4]
    assert session.run(None, {"input": x})[0].shape == (4, 10)


def test_local_store(digits_config: Path, tmp_path: Path) -> None:
    db = tmp_path / "store" / "mlflow.db"
    config_path = _config(digits_config, tmp_path, uri=f"sqlite:///{db}")
    result = autoquant.tune(load_config(config_path))
    assert len(result.trials) == 1  # the first strategy is within budget on digits
    _check_store(f"sqlite:///{db}", config_path)
    # A resumed study reuses its parent run.
    autoquant.tune(load_config(config_path))
    _check_store(f"sqlite:///{db}", config_path)


def test_a_study_with_no_trial_within_budget_logs_an_over_budget_model(tmp_path: Path) -> None:
    """The closest trial's model is not logged as the best one (on disk it is
    model.over-budget.int8.onnx): a cosine decay of exactly 0 is out of reach."""
    from mlflow import MlflowClient

    db = tmp_path / "store" / "mlflow.db"
    config_path = digits_study(
        tmp_path,
        "tracked.yaml",
        tracking={"enabled": True, "uri": f"sqlite:///{db}"},
        search={"accept_int8_decay": 0.0},
        test={"objective": "cosine"},
    )
    result = autoquant.tune(load_config(config_path))
    assert not result.within_budget
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(result.study_name)
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [m.name for m in models] == ["over_budget_model"]


def test_default_store_is_inside_the_output_folder(digits_config: Path, tmp_path: Path) -> None:
    config = load_config(digits_config)
    autoquant.tune(config)
    assert (config.output.directory / "mlflow.db").is_file()
    assert (config.output.directory / "mlartifacts").is_dir()
    assert sorted(p.name for p in config.output.directory.parent.iterdir()) == ["digits.yaml", "out"]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model must not leave it set
    _check_store(f"sqlite:///{config.output.directory / 'mlflow.db'}", digits_config)


def test_tracking_can_be_turned_off(digits_config: Path, tmp_path: Path) -> None:
    config = load_config(_config(digits_config, tmp_path, enabled=False))
    autoquant.tune(config)
    assert not (config.output.directory / "mlflow.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on a free localhost port, stopped afterwards."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_real_tracking_server(digits_config: Path, tmp_path: Path, mlflow_server: str) -> None:
    config_path = _config(digits_config, tmp_path, uri=mlflow_server)
    autoquant.tune(load_config(config_path))
    _check_store(mlflow_server, config_path)


def test_unreachable_server_fails_fast_and_writes_nothing(digits_config: Path, tmp_path: Path) -> None:
    config_path = _config(digits_config, tmp_path, uri=f"http://127.0.0.1:{_free_port()}")
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "autoquant", "tune", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - began < 10
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the MLflow tracking server does not answer" in result.stderr
    assert not (tmp_path / "out").exists()


def test_environment_uri_applies_without_tracking_uri(
    digits_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(digits_config)
    default = f"sqlite:///{config.output.directory / 'mlflow.db'}"
    assert tracking_uri(config) == default and uri_origin(config) == "tracking.uri"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(config) == "http://mlflow.example:5000"
    assert uri_origin(config) == "MLFLOW_TRACKING_URI"
    explicit = config.replace(tracking={"uri": "sqlite:///elsewhere.db"})
    assert tracking_uri(explicit) == "sqlite:///elsewhere.db" and uri_origin(explicit) == "tracking.uri"


def test_study_logs_to_the_environment_store(
    digits_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "from-env" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    config = load_config(digits_config)
    autoquant.tune(config)
    assert db.is_file() and not (config.output.directory / "mlflow.db").exists()
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{db}"
    _check_store(f"sqlite:///{db}", digits_config)


def test_unreachable_environment_server_is_named(digits_config: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "autoquant", "tune", str(digits_config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MLFLOW_TRACKING_URI": url},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"MLFLOW_TRACKING_URI {url}: the MLflow tracking server does not answer" in result.stderr


class _GatedProxy:
    """An HTTP proxy in front of a tracking server that holds every MLflow call (all but
    ``/health``) until :attr:`gate` is set, and counts the calls it has answered."""

    def __init__(self, upstream: str, hold_s: float) -> None:
        import http.server
        import threading

        self.gate = threading.Event()
        self.answered = 0
        self.held = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.startswith("/health"):
                    proxy.held += 1
                    if not proxy.gate.wait(hold_s):  # a tracker that waits for MLflow waits here,
                        proxy.gate.set()  # once
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                request = urllib.request.Request(
                    upstream + self.path, data=body or None, headers=headers, method=self.command
                )
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, kind, payload = (
                            response.status,
                            response.headers.get("Content-Type"),
                            response.read(),
                        )
                except (
                    urllib.error.HTTPError
                ) as exc:  # MLflow's errors (404 for a missing experiment) pass on
                    status, kind, payload = exc.code, exc.headers.get("Content-Type"), exc.read()
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if not self.path.startswith("/health"):
                    proxy.answered += 1

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def test_the_first_trial_does_not_wait_for_mlflow(
    digits_config: Path, tmp_path: Path, mlflow_server: str
) -> None:
    """Every MLflow call of the study is held at a proxy until its first trial has finished: the
    trial finishes all the same (no call answered before it), then the logging catches up, and the
    store holds the parent run and every trial. A tracker that waited for MLflow before the first
    trial would wait at the proxy (for 240 s) and fail the first assertion."""
    import autoquant.search

    proxy = _GatedProxy(mlflow_server, hold_s=240)
    seen: dict[str, int] = {}

    class Reporter(autoquant.search.NullReporter):
        def trial_finished(self, outcome: object, failure: object, best: object) -> None:
            if not seen:
                seen.update(answered=proxy.answered, held=proxy.held)
                proxy.gate.set()  # now MLflow may answer

    try:
        config_path = _config(digits_config, tmp_path, uri=proxy.url)
        autoquant.tune(load_config(config_path), reporter=Reporter())
    finally:
        proxy.close()
    assert seen["answered"] == 0, seen  # the first trial finished before any MLflow call was answered
    assert proxy.answered > 0  # then the logging caught up through the proxy
    _check_store(mlflow_server, config_path)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started that are still running (Linux)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Whether the process runs (a zombie left to a parent that does not reap it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_before_the_first_trial_ends_at_once(tmp_path: Path) -> None:
    """SIGINT at the first stage line, while MLflow's process imports mlflow or opens its store:
    exit status 130 at once, then the study runs whole on the next command.

    The target is 1 s; the bound here is 5 s for a loaded machine. Measured on a 2-core machine at
    load 5: 0.04 to 0.06 s (it was 2.4 to 4 s when the MLflow thread was joined at exit, with the
    interpreter's own shutdown taking about 1 s of that).
    """
    config_path = digits_study(
        tmp_path,
        "digits.yaml",
        tracking={"enabled": True},
        calibration={"cache_dir": str(tmp_path / "cache")},
    )
    env = {**os.environ, "NO_COLOR": "1"}
    command = [sys.executable, "-m", "autoquant", "tune", str(config_path)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
        if line.strip().endswith("FP32 reference"):  # with the statistics pass, on a small model
            break
    mlflow_process = [
        p
        for p in _children(process.pid)
        if b"autoquant.tracking._process" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        process.wait(timeout=60)
    finally:
        process.kill()
    took = time.monotonic() - sent
    lines += process.stderr.readlines()
    assert process.returncode == 130, "".join(lines)[-3000:]
    assert took < 5, f"{took:.2f} s from SIGINT to exit"
    assert "autoquant: error: interrupted\n" in lines and "Traceback" not in "".join(lines)
    # MLflow's process had started; it ends by itself once its parent is gone.
    assert len(mlflow_process) == 1, "".join(lines)[-3000:]
    deadline = time.monotonic() + 120
    while _running(mlflow_process[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(mlflow_process[0])
    # Nothing half-written: the next run resumes and completes, with one parent run.
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_store(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", config_path)


def _stopped_study(tmp_path: Path, name: str) -> tuple[Path, optuna.Study]:
    """A digits study stored without any trial (stopped before its first) and without MLflow."""
    from autoquant.errors import SearchError

    out = tmp_path / name
    out.mkdir()
    path = digits_study(out, "digits.yaml", tracking={"enabled": False}, search={"study_name": name})
    with pytest.raises(SearchError, match="no trial"):
        autoquant.tune(load_config(path), stop=lambda: True)
    config = load_config(path)
    return path, optuna.load_study(study_name=study_name(config), storage=storage_url(config))


def test_the_parent_run_is_claimed_by_one_process(tmp_path: Path, mlflow_server: str) -> None:
    """The process that claimed the parent run creates it; another waits for its id in the
    background (its trial logs queue behind) and uses it; a claim whose process is gone is taken
    over at once."""
    from mlflow import MlflowClient

    import autoquant.search
    from autoquant.names import STUDY_MLFLOW_CLAIM
    from autoquant.tracking._parent import CLAIM_WAIT_S

    client = MlflowClient(tracking_uri=mlflow_server)
    host = socket.gethostname()

    # Another live process (here a `sleep`) claimed the parent: the study's first trial runs
    # while this process waits; the other process then stores its parent, which gets every run.
    path, study = _stopped_study(tmp_path, "live")
    other = subprocess.Popen(["sleep", "600"])
    try:
        study.set_user_attr(STUDY_MLFLOW_CLAIM, {"host": host, "pid": other.pid, "at": time.time()})
        experiment = client.create_experiment(study.study_name)
        parent = client.create_run(experiment, run_name=study.study_name).info.run_id
        stored_during: list[object] = []

        class Other(autoquant.search.NullReporter):
            def trial_finished(self, outcome: object, failure: object, best: object) -> None:
                if not stored_during:  # the first trial is over: the claimant stores its run now
                    stored_during.append(study.user_attrs.get(STUDY_MLFLOW_PARENT))
                    study.set_user_attr(STUDY_MLFLOW_PARENT, parent)

        began = time.monotonic()
        config = load_config(path).replace(tracking={"enabled": True, "uri": mlflow_server})
        result = autoquant.tune(config, reporter=Other())
        assert time.monotonic() - began < CLAIM_WAIT_S  # it did not take the claim over
    finally:
        other.kill()
        other.wait()
    assert stored_during == [None] and result.trials
    runs = client.search_runs([experiment], max_results=100)
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent}
    assert len(children) == len(study.trials)
    assert client.get_run(parent).info.status == "FINISHED"  # closed by the last process out

    # A claim left by a process that is gone: taken over, the parent created and stored here.
    path, study = _stopped_study(tmp_path, "gone")
    dead = subprocess.Popen(["true"])
    dead.wait()
    study.set_user_attr(STUDY_MLFLOW_CLAIM, {"host": host, "pid": dead.pid, "at": time.time()})
    config = load_config(path).replace(tracking={"enabled": True, "uri": mlflow_server})
    autoquant.tune(config)
    attrs = study.user_attrs
    assert attrs[STUDY_MLFLOW_CLAIM] is None and attrs[STUDY_MLFLOW_PARENT]
    _check_store(mlflow_server, path)


def _await_first_trial(config_path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    """Wait until the ``tune`` of ``process`` runs its first trial and its worker record says so
    (read from the study database, read-only: opening it with Optuna could create it; the trial
    lasts about 2 s on digits)."""
    import sqlite3

    db = storage_url(load_config(config_path)).removeprefix("sqlite:///")
    query = "SELECT value_json FROM study_system_attributes WHERE key LIKE ?"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the tune ended before its first trial"
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection,
        ):
            records = [json.loads(v) for (v,) in connection.execute(query, (f"{WORKER_PREFIX}%",))]
            if any(r["pid"] == process.pid and r["state"] == WorkerState.RUNNING for r in records):
                return
        time.sleep(0.1)
    raise AssertionError(f"no trial under way after {timeout:.0f} s")


@pytest.mark.integration
def test_a_killed_tune_rerun_at_once_closes_the_parent_run(tmp_path: Path) -> None:
    """A ``tune`` SIGKILLed in its first trial leaves a fresh worker record (a long grace period
    here, so that it stays fresh whatever the machine's load): its rerun must see that the pid is
    gone, count itself the last process out and end MLflow's parent run, instead of leaving it
    RUNNING for a process that no longer exists."""
    from mlflow import MlflowClient

    config_path = digits_study(
        tmp_path, "killed.yaml", tracking={"enabled": True}, storage={"grace_period": 600}
    )
    command = [sys.executable, "-m", "autoquant", "tune", str(config_path)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _await_first_trial(config_path, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    config = load_config(config_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{config.output.directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study_name(config))
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]


def _interrupted_store(db: Path) -> None:
    """A store whose first migration was cut short, as a full disk leaves it: MLflow makes it in a
    process killed as soon as its migrations have begun (they take seconds), and the table that a
    migration of ``tags`` copies into is left behind."""
    import sqlite3

    _kill_during_migrations(db)
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("CREATE TABLE _alembic_tmp_tags (key TEXT, value TEXT, run_uuid TEXT)")


def _kill_during_migrations(db: Path) -> None:
    import sqlite3

    make = f"from mlflow import MlflowClient; MlflowClient(tracking_uri={f'sqlite:///{db}'!r}).search_experiments()"
    creator = subprocess.Popen(
        [sys.executable, "-c", make], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and creator.poll() is None:
            with (
                contextlib.suppress(sqlite3.Error),
                contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection,
            ):
                if connection.execute("SELECT version_num FROM alembic_version").fetchone():
                    return
            time.sleep(0.02)
        raise AssertionError("MLflow's migrations were not caught under way")
    finally:
        creator.send_signal(signal.SIGKILL)
        creator.wait()


@pytest.mark.integration
def test_a_half_made_store_is_rebuilt(tmp_path: Path) -> None:
    """A first run interrupted during MLflow's migrations (a full disk, a kill) leaves a store that
    MLflow cannot open again ("table _alembic_tmp_tags already exists"): the next ``tune`` rebuilds
    it, and says so in one line."""
    from mlflow import MlflowClient

    from autoquant.tracking._process import half_made

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    _interrupted_store(db)
    assert half_made(db)
    config_path = digits_study(tmp_path, "half.yaml", tracking={"enabled": True, "uri": f"sqlite:///{db}"})
    result = subprocess.run(
        [sys.executable, "-m", "autoquant", "tune", str(config_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rebuilt = [line for line in result.stderr.splitlines() if "rebuilt" in line]
    assert rebuilt == [
        f"INFO: MLflow: the store {db} was left half-made by an interrupted first run; rebuilt"
    ]
    assert not half_made(db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(study_name(load_config(config_path)))
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["FINISHED"] * 2
