"""The process that makes a study's MLflow calls (``python -m autoquant.tracking LEVEL [OURS]``).

mlflow takes seconds of pure Python to import and to open a store (a local store runs its
database migrations); in a thread of the study's process that work holds the interpreter lock
away from calibration and the trials. In a process of its own it runs on another core, and the
study's process only waits on a pipe, in its background thread (`autoquant.tracking._tracker`).

The protocol: the parent writes pickled ``(method, args)`` requests to this process's stdin; each
is answered on the original stdout with a pickled ``(ok, value, records)``: the method's result
(or ``"Type: message"`` when it failed) and the log records of level ``LEVEL`` or more that it
emitted (``OURS``: the level of autoquant's own records, when it differs), as ``(logger name,
level, message)``, which the parent logs again. Anything else written to stdout is dropped, and
the parent gives this process no stderr: it holds none of the parent's streams, so a pipe reading
the study's output ends with the study. The process ignores SIGINT
(the parent handles Ctrl-C) and ends when its stdin closes, after the request at hand: the parent
exits without waiting for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from autoquant.names import PARETO_FILE, SUMMARY_FILE

logger = logging.getLogger(__name__)


class MlflowLogger:
    """The MLflow calls of a study, made with `mlflow.MlflowClient` (no global active run)."""

    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        if not uri.startswith("sqlite:///"):
            self.client = MlflowClient(tracking_uri=uri)
            return
        # A new SQLite store is created by migrations that take seconds; several processes doing
        # them at once fail ("Online migration expected to match one row"): one at a time, under
        # a lock on the store's folder (no lock file is left behind). MLflow takes a lock of its own
        # too, a file it leaves in the temporary folder: under ours, that folder is a scratch one
        # beside the store, removed afterwards, so that nothing is left outside the output folder.
        folder = Path(uri.removeprefix("sqlite:///")).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        scratch, system_temp = folder / ".mlflow-init", tempfile.tempdir
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            scratch.mkdir(exist_ok=True)
            tempfile.tempdir = str(scratch)
            rebuild_half_made(Path(uri.removeprefix("sqlite:///")))
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)  # the store is made by now
        finally:
            tempfile.tempdir = system_temp
            shutil.rmtree(scratch, ignore_errors=True)
            os.close(fd)

    def experiment(self, name: str, location: str | None) -> str:
        """The id of the experiment ``name``, created (with its artifacts at ``location``) if needed."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=location)

    def reopen(self, run_id: str) -> bool:
        """Mark the run RUNNING again; False if it is gone from the store."""
        try:
            self.client.get_run(run_id)
            self.client.update_run(run_id, status="RUNNING")
            return True
        except Exception:  # deleted from the store
            return False

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        """A new run's id."""
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def delete_run(self, run_id: str) -> None:
        """Delete a run (a parent another process stored first)."""
        self.client.delete_run(run_id)

    def log_run(
        self,
        run_id: str,
        metrics: dict[str, float],
        params: dict[str, str],
        tags: dict[str, str],
        texts: dict[str, str],
        status: str | None = None,
    ) -> None:
        """Log metrics, parameters, tags and text artifacts to a run; with ``status``, end it so."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        for name, text in texts.items():
            self.client.log_text(run_id, text, name)
        if status is not None:
            self.client.set_terminated(run_id, status)

    def child_run(
        self,
        experiment_id: str,
        name: str,
        tags: dict[str, str],
        metrics: dict[str, float],
        params: dict[str, str],
        texts: dict[str, str],
        status: str,
    ) -> str:
        """A nested run (``tags`` hold ``mlflow.parentRunId``) with everything logged, ended with ``status``."""
        run_id = self.create_run(experiment_id, name, tags)
        self.log_run(run_id, metrics, params, {}, texts, status)
        return run_id

    def close_parent(
        self,
        experiment_id: str,
        parent_id: str,
        summary: dict,
        model_path: str | None,
        report_path: str | None,
    ) -> None:
        """Log the study's summary, Pareto front, report and best model (mlflow.onnx flavour) to
        the parent run, and end it."""
        best = summary.get("best") or {}
        latency = summary.get("latency") or {}
        metrics = {
            "best_decay": best.get("decay"),
            "best_score": best.get("score"),
            "best_decay_ci_low": (best.get("decay_ci") or [None, None])[0],
            "best_decay_ci_high": (best.get("decay_ci") or [None, None])[1],
            "best_decay_bound": best.get("decay_bound"),
            "resolvable_decay": (summary.get("resolution") or {}).get("resolvable_decay"),
            "resolution_needed_samples": (summary.get("resolution") or {}).get("needed_samples"),
            "best_fp32_nodes": len(best.get("fp32_nodes", [])) if best else None,
            # run in float by onnxruntime (optimised graph); wrapped: kept in FP32 by the choices
            "best_fp32_compute_layers": len(best.get("fp32_compute_layers", [])) if best else None,
            "best_fp32_wrapped_layers": len(best.get("fp32_wrapped_layers") or []) if best else None,
            "completed_trials": summary.get("completed_trials"),
            "failed_trials": summary.get("failed_trials"),
            "time_to_budget_s": summary.get("time_to_budget_s"),
            "pareto_trials": len(summary.get("pareto_front") or []),
        }
        for stage, seconds in (summary.get("timings") or {}).items():  # statistics_s, setup_s, ...
            metrics[f"time_{stage}"] = seconds
        for label, t in (latency.get("threads") or {}).items():
            metrics[f"fp32_latency_ms_{label}_threads"] = t.get("fp32_ms")
            metrics[f"best_latency_ms_{label}_threads"] = t.get("best_int8_ms")
            metrics[f"best_speedup_{label}_threads"] = t.get("best_speedup")
        tags = {"latency_cpu_isa": latency.get("cpu_isa"), "cpu_vnni": latency.get("cpu_vnni")}
        self.log_run(
            parent_id,
            {k: v for k, v in metrics.items() if v is not None},
            {},
            {k: str(v) for k, v in tags.items() if v is not None},
            {SUMMARY_FILE: json.dumps(summary, indent=2)},
        )
        self._log_pareto(experiment_id, parent_id, summary)
        if report_path is not None and Path(report_path).is_file():
            self.client.log_artifact(parent_id, report_path)
        if model_path is not None and Path(model_path).is_file():
            import mlflow
            import onnx

            mlflow.set_tracking_uri(self.uri)  # this process logs to one store only
            with mlflow.start_run(run_id=parent_id):
                mlflow.onnx.log_model(
                    onnx.load(model_path),
                    # over the budget: not a model to ship, as model.over-budget.int8.onnx on disk
                    name="best_model" if summary.get("within_budget") else "over_budget_model",
                    save_as_external_data=False,
                    pip_requirements=["onnx", "onnxruntime"],  # inferring them takes seconds
                )
        self.client.set_terminated(parent_id, "FINISHED")

    def _log_pareto(self, experiment_id: str, parent_id: str, summary: dict) -> None:
        """The Pareto front as a JSON table on the parent, and the tag ``pareto`` on every trial run
        (``true`` on the front), so that the MLflow UI can filter on ``tags.pareto = 'true'``."""
        front = set(summary.get("pareto_front") or [])
        keys = (
            "number",
            "key",
            "decay",
            "decay_ci",
            "decay_bound",
            "within_budget",
            "latency_ms",
            "latency_by_threads",
            "speedup_by_threads",
        )
        rows = [
            {**{k: t.get(k) for k in keys}, "fp32_compute_layers": len(t.get("fp32_compute_layers", []))}
            for t in summary.get("trials") or []
            if t["number"] in front
        ]
        self.client.log_text(parent_id, json.dumps(rows, indent=2), PARETO_FILE)
        children = self.client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000
        )
        completed = {t["number"] for t in summary.get("trials") or []}
        for run in children:
            number = run.data.tags.get("trial_number")
            if number is None or int(number) not in completed:
                continue
            value = str(int(number) in front).lower()
            if run.data.tags.get("pareto") != value:
                self.client.set_tag(run.info.run_id, "pareto", value)


def half_made(path: Path) -> bool:
    """Whether the SQLite store at ``path`` was left half-made by an interrupted first run (a full
    disk, a kill during MLflow's migrations): a table ``_alembic_tmp_*`` left over, or a schema
    version that is missing or not MLflow's latest, and no run in it (a store with runs is never
    half-made: runs come after the migrations). An empty file, or one that is not a database, is
    left to MLflow."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = {n for (n,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables or ("runs" in tables and connection.execute("SELECT 1 FROM runs").fetchone()):
                return False
            version = None
            if "alembic_version" in tables:
                version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no such file, or not a database
        return False
    if any(n.startswith("_alembic_tmp_") for n in tables) or version is None:
        return True
    from mlflow.store.db.utils import _get_latest_schema_revision

    return version[0] != _get_latest_schema_revision()


def rebuild_half_made(path: Path) -> None:
    """Delete a half-made SQLite store (see :func:`half_made`), so that MLflow makes it again, and
    say so in one line."""
    if not half_made(path):
        return
    for leftover in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    logger.info("MLflow: the store %s was left half-made by an interrupted first run; rebuilt", path)


class _Records(logging.Handler):
    """Keeps the records emitted while a request is served, to send them with its answer."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.name, record.levelno, record.getMessage()))
        except Exception:  # a record whose message does not format
            self.handleError(record)

    def take(self) -> list[tuple[str, int, str]]:
        taken, self.records = self.records, []
        return taken


def serve(requests: BinaryIO, answers: BinaryIO, level: int, ours: int | None = None) -> None:
    """Answer the requests until ``requests`` ends: ``("open", (uri,))`` first, then the methods of
    `MlflowLogger`. mlflow is imported first; if that fails, every request fails so. ``level``:
    the records sent back; ``ours``: those of autoquant's loggers, when it differs."""
    ours = level if ours is None else ours
    records = _Records(min(level, ours))
    root = logging.getLogger()
    root.handlers[:] = [records]
    root.setLevel(level)
    logging.getLogger("autoquant").setLevel(ours)
    logging.captureWarnings(True)
    broken: str | None = None
    try:
        import mlflow  # noqa: F401  (the slow part: done before the first request is read)
    except Exception as exc:
        broken = f"importing mlflow failed: {type(exc).__name__}: {exc}"
    target: MlflowLogger | None = None
    while True:
        try:
            method, args = pickle.load(requests)
        except EOFError:
            return
        try:
            if broken is not None:
                raise RuntimeError(broken)
            if method == "open":
                target, value = MlflowLogger(*args), None
            elif target is None:
                raise RuntimeError(f"{method} before open")
            else:
                value = getattr(target, method)(*args)
            answer: tuple[bool, Any, list] = (True, value, records.take())
        except Exception as exc:
            answer = (False, f"{type(exc).__name__}: {exc}", records.take())
        pickle.dump(answer, answers)
        answers.flush()


def main() -> None:
    """Entry point of the process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    with open(os.devnull, "wb") as nowhere:  # a stray print must not break the protocol
        os.dup2(nowhere.fileno(), sys.stdout.fileno())
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    # MLflow 3 sends usage telemetry to its servers from every client call; a study should not
    # wait on that (and our machines may have no route there). Users can opt in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    level = int(sys.argv[1]) if len(sys.argv) > 1 else logging.WARNING
    serve(sys.stdin.buffer, answers, level, int(sys.argv[2]) if len(sys.argv) > 2 else None)


if __name__ == "__main__":
    main()
