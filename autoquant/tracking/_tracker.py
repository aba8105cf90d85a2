"""Tracking stage: the study as a parent MLflow run, every trial as a nested child run.

Every MLflow call, the parent run's creation included, is made in order by one background daemon
thread, in a process of its own that imports mlflow while the study calibrates
(:mod:`autoquant.tracking`): trials never wait for MLflow, nor share the interpreter lock
with it, and an interrupted process does not wait for it either. :meth:`MlflowTracker.finish`
waits for the queued calls, within a bound.

The parent run's id is stored in the Optuna study (user attribute ``mlflow_parent_run_id``), so a
resumed study and other workers attach their trials to the same parent; the last process to leave
the study closes it. The first process to find no parent claims its creation in the study (under
the study lock, a storage write that takes milliseconds), creates the run in the background and
stores its id; the others wait in the background for that id, with their trial logs queued behind.
The store is checked before any calibration work: an unreachable tracking server fails within
seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autoquant.config import StudyConfig
from autoquant.errors import ConfigError
from autoquant.hardware import resolve_reduce_range, target_isa
from autoquant.names import (
    MLFLOW_ARTIFACTS_DIR,
    MLFLOW_DB_FILE,
    STUDY_MLFLOW_CLAIM,
    STUDY_MLFLOW_PARENT,
    TRIAL_FAIL_REASON,
)
from autoquant.storage import process_alive

logger = logging.getLogger(__name__)

_TIMEOUT_S = 5.0
#: How long a process waits for another live process's claimed parent run before creating one.
CLAIM_WAIT_S = 120.0
#: How long :meth:`MlflowTracker.finish` waits for the queued calls; and after how long it says so.
FINISH_WAIT_S = 300.0
FINISH_NOTICE_S = 2.0
#: How often a process waiting for another's parent run reads the study.
_POLL_S = 0.5


def tracking_uri(config: StudyConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the output folder."""
    default = f"sqlite:///{config.output.directory / MLFLOW_DB_FILE}"
    return config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default


def uri_origin(config: StudyConfig) -> str:
    """Where :func:`tracking_uri` comes from, for messages: the config key or the environment variable."""
    if config.tracking.uri or not os.environ.get("MLFLOW_TRACKING_URI"):
        return "tracking.uri"
    return "MLFLOW_TRACKING_URI"


def check_reachable(uri: str, origin: str = "tracking.uri") -> None:
    """Fail fast when an ``http(s)://`` tracking server does not answer its health check.

    Args:
        uri: The tracking URI.
        origin: Where the URI was set (``tracking.uri`` or ``MLFLOW_TRACKING_URI``), for the message.

    Raises:
        ConfigError: The server cannot be reached within a few seconds.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_TIMEOUT_S) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise ConfigError(
        f"{origin} {uri}: the MLflow tracking server does not answer ({reason}); start it with "
        f"`mlflow server`, fix {origin}, or set tracking: {{enabled: false}}"
    )


class NullTracker:
    """Tracking turned off: every call does nothing."""

    seconds = 0.0
    attach_seconds = 0.0
    finish_seconds = 0.0
    busy_seconds = 0.0

    def attach(self, study: Any, storage: Any, stats_key: str, fp32_score: float) -> None:
        """Do nothing."""

    def log_trial(
        self, number: int, params: dict, metrics: dict, tags: dict, artifacts: dict[str, str]
    ) -> None:
        """Do nothing."""

    def log_failure(self, number: int, params: dict, reason: str) -> None:
        """Do nothing."""

    def finish(
        self, summary: dict, model_path: Path | None, report_path: Path | None, close_parent: bool = True
    ) -> None:
        """Do nothing."""


class _Background:
    """Runs calls in order on one daemon thread, started when there is work and ended when idle.

    A daemon thread, not an executor's: the interpreter joins an executor's threads at exit, so a
    Ctrl-C while mlflow is being imported or a run is being logged would wait for that. The calls
    still queued when the process exits are dropped; :meth:`MlflowTracker.finish` waits for them.
    """

    idle_s = 5.0

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: deque[tuple[Future, Callable[[], Any]]] = deque()
        self._ready = threading.Condition()
        self._running = False

    def submit(self, call: Callable[[], Any]) -> Future:
        """Queue ``call``; its future holds its result or its exception."""
        future: Future = Future()
        with self._ready:
            self._calls.append((future, call))
            if self._running:
                self._ready.notify()
            else:
                self._running = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                if not self._calls:
                    self._ready.wait(self.idle_s)
                if not self._calls:
                    self._running = False
                    return
                future, call = self._calls.popleft()
            if not future.set_running_or_notify_cancel():  # cancelled by a finish that gave up
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to whoever waits for the future
                future.set_exception(exc)
            else:
                future.set_result(result)


class _Child:
    """The process that makes the MLflow calls (:mod:`autoquant.tracking`), called from the
    background thread only. It starts importing mlflow at once; it is not waited for at exit."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._ended: str | None = None

    def start(self) -> None:
        """Start the process (it imports mlflow while the study calibrates)."""
        # The same autoquant as this process's (a checkout's too), never one in the working folder.
        root = str(Path(__file__).resolve().parents[2])
        code = (
            f"import sys; r = {root!r}; r in sys.path or sys.path.insert(0, r); "
            "from autoquant.tracking._process import main; main()"
        )
        level = str(logging.getLogger().getEffectiveLevel())
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-c", code, level],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its errors come back as answers; it holds none of our streams
            start_new_session=True,  # Ctrl-C is the study process's to handle
        )

    def call(self, method: str, *args: Any) -> Any:
        """Run ``MlflowLogger.method(*args)`` in the process; its log records are logged here.

        Raises:
            RuntimeError: The call failed (the message names MLflow's error), or the process ended.
        """
        if self._process is None:
            self.start()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        if self._ended is None:
            try:
                pickle.dump((method, args), process.stdin)
                process.stdin.flush()
                ok, value, records = pickle.load(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                try:
                    status: int | None = process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    status = None
                self._ended = f"MLflow's logging process ended (exit status {status})"
        if self._ended is not None:
            raise RuntimeError(self._ended)
        for name, level, text in records:
            logging.getLogger(name).log(level, "%s", text)
        if not ok:
            raise RuntimeError(f"MLflow: {value}")
        return value

    def close(self) -> None:
        """Close the process's input: it ends after its current call, unwaited for."""
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()


class MlflowTracker:
    """Logs a study to MLflow with :class:`mlflow.MlflowClient` (no global active run).

    Every MLflow call is made in order by one background thread (see :class:`_Background`), in a
    process of its own (:mod:`autoquant.tracking`: importing mlflow and opening a store are
    seconds of Python that would hold this process's interpreter lock): the opening of the parent
    run (:meth:`attach`), the trial logs, which queue behind it, and the parent's closing. Only
    :meth:`finish` waits, within :data:`FINISH_WAIT_S`.

    Attributes:
        seconds: Time the study waited for MLflow (``attach_seconds + finish_seconds``).
        attach_seconds: Time :meth:`attach` took before the first trial: a claim in the study's
            storage; no MLflow call.
        finish_seconds: Time :meth:`finish` waited for the queued calls.
        busy_seconds: Time the background thread waited for MLflow calls (the import of mlflow too).
    """

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.uri = tracking_uri(config)
        self.study_name = ""
        self.stats_key = ""
        self.fp32_score = float("nan")
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.seconds = 0.0
        self.attach_seconds = 0.0
        self.finish_seconds = 0.0
        self.busy_seconds = 0.0
        self._host = socket.gethostname()
        self._worker = _Background("autoquant-mlflow")
        self._pending: list[Future] = []
        self._guard = threading.Lock()
        self._warned = False
        self._child = _Child()
        weakref.finalize(self, self._child.close)
        self._submit(self._child.start)  # importing mlflow takes seconds: overlap it with calibration

    def _submit(self, call: Callable[..., Any], *args: Any) -> Future:
        def timed() -> Any:
            began = time.perf_counter()
            try:
                return call(*args)
            except Exception as exc:
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "MLflow: %s failed (%s: %s); the study goes on, and the error is raised at its end",
                        call.__name__.strip("_").replace("_", " "),
                        type(exc).__name__,
                        exc,
                    )
                raise
            finally:
                self.busy_seconds += time.perf_counter() - began

        future = self._worker.submit(timed)
        with self._guard:
            self._pending.append(future)
        return future

    def _experiment(self) -> str:
        name = self.config.tracking.experiment or self.study_name
        location = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the cwd
            location = (
                (Path(self.uri.removeprefix("sqlite:///")).parent / MLFLOW_ARTIFACTS_DIR).resolve().as_uri()
            )
        elif "://" in self.uri and not self.uri.startswith(("http://", "https://", "databricks")):
            # another database (postgresql://...): the artifacts go to the output folder, not the cwd
            location = (self.config.output.directory / MLFLOW_ARTIFACTS_DIR).resolve().as_uri()
        return self._child.call("experiment", name, location)

    def attach(self, study: Any, storage: Any, stats_key: str, fp32_score: float) -> None:
        """Queue the opening of the study's parent run, and return at once.

        The stored parent is reused; without one, the first process claims its creation in the
        study (under the study lock: a storage write, no MLflow call), creates it in the
        background and stores its id; the others wait in the background for that id (a claim
        whose process is gone, or older than :data:`CLAIM_WAIT_S`, is taken over). The trial logs
        queue behind it.

        Args:
            study: The Optuna study.
            storage: Its :class:`~autoquant.storage.StudyStorage` (the study lock, retries).
            stats_key: The statistics cache key, a parameter of the parent run.
            fp32_score: The FP32 reference score, a metric of the parent run.
        """
        self.study_name, self.stats_key, self.fp32_score = study.study_name, stats_key, fp32_score
        began = time.perf_counter()
        plan = storage.call(self._claim, study, storage)
        self.attach_seconds = time.perf_counter() - began
        self.seconds += self.attach_seconds
        self._submit(self._open_parent, study, storage, plan)

    def _claimed_elsewhere(self, claim: Any) -> bool:
        """Whether ``claim`` is another process's that may still store a parent run."""
        if not isinstance(claim, dict) or time.time() - float(claim.get("at", 0.0)) > CLAIM_WAIT_S:
            return False
        if claim.get("host") != self._host:
            return True
        pid = claim.get("pid")
        return isinstance(pid, int) and pid > 0 and pid != os.getpid() and process_alive(pid)

    def _claim(self, study: Any, storage: Any, stale: Any = None) -> tuple[str, Any]:
        """Under the study lock: ("reuse", the stored parent id), ("await", another process's
        claim) or ("create", None) once this process holds the claim (``stale``: a claim to take
        over even if its process looks alive)."""
        with storage.lock(study.study_name):
            attrs = study.user_attrs
            stored = attrs.get(STUDY_MLFLOW_PARENT)
            if stored is not None:
                return "reuse", stored
            claim = attrs.get(STUDY_MLFLOW_CLAIM)
            if claim and claim != stale and self._claimed_elsewhere(claim):
                return "await", claim
            study.set_user_attr(
                STUDY_MLFLOW_CLAIM, {"host": self._host, "pid": os.getpid(), "at": time.time()}
            )
            return "create", None

    def _open_parent(self, study: Any, storage: Any, plan: tuple[str, Any]) -> None:
        scheme = self.uri.split(":", 1)[0].split("+")[0]
        if scheme in ("postgresql", "mysql", "mssql"):  # a new store's migrations: one process at a time
            with storage.lock(study.study_name):
                self._child.call("open", self.uri)
        else:  # a tracking server; a SQLite store is locked by the MLflow process
            self._child.call("open", self.uri)
        self.experiment_id = self._experiment()
        kind, stored = plan
        if kind == "await":
            stored = self._await_parent(study, storage, stored)
        if stored is not None:
            if self._child.call("reopen", stored):
                self.parent_id = stored
                return
            logger.info("MLflow parent run %s is gone; starting a new one", stored)
        run_id = self._child.call(
            "create_run", self.experiment_id, self.study_name, {"autoquant.search._study": self.study_name}
        )
        kept = storage.call(self._store_parent, study, storage, run_id, stored)
        if kept != run_id:  # another process stored its parent first: use that one
            self._child.call("delete_run", run_id)
            logger.debug("MLflow: parent run %s was stored first; %s deleted", kept, run_id)
            self.parent_id = kept
            return
        self.parent_id = kept
        self._log_parent_start()

    def _await_parent(self, study: Any, storage: Any, claim: Any) -> str | None:
        """Wait for the process that claimed the parent run to store its id; None once this
        process holds the claim instead (that process is gone or has not stored it in time)."""
        logger.debug("MLflow: waiting for the parent run that %s creates", claim)
        since = time.monotonic()
        while True:
            attrs = storage.call(lambda: study.user_attrs)
            if attrs.get(STUDY_MLFLOW_PARENT) is not None:
                return attrs[STUDY_MLFLOW_PARENT]
            current = attrs.get(STUDY_MLFLOW_CLAIM)
            if current != claim:  # taken over by another process: give it its own time
                claim, since = current, time.monotonic()
            if not self._claimed_elsewhere(current) or time.monotonic() - since > CLAIM_WAIT_S:
                kind, value = storage.call(self._claim, study, storage, current)
                if kind != "await":
                    return value
                claim, since = value, time.monotonic()
            time.sleep(_POLL_S)

    def _store_parent(self, study: Any, storage: Any, run_id: str, replaces: str | None) -> str:
        """Store ``run_id`` as the study's parent (in place of ``replaces``, a run gone from the
        store) unless another process stored one first; return the parent to use."""
        with storage.lock(study.study_name):
            attrs = study.user_attrs
            current = attrs.get(STUDY_MLFLOW_PARENT)
            if current is not None and current != replaces:
                return current
            study.set_user_attr(STUDY_MLFLOW_PARENT, run_id)
            if attrs.get(STUDY_MLFLOW_CLAIM) is not None:
                study.set_user_attr(STUDY_MLFLOW_CLAIM, None)
            return run_id

    def _log_parent_start(self) -> None:
        search = self.config.search
        params = {
            "mode": search.mode,
            "accept_int8_decay": search.accept_int8_decay,
            "decay": search.decay,
            "stats_cache_key": self.stats_key,
            "model": str(self.config.model.path),
            "cpu_isa": target_isa().label,
            "reduce_range_resolved": resolve_reduce_range(self.config.quantization.reduce_range),
        }
        self._child.call(
            "log_run",
            self.parent_id,
            {"fp32_score": self.fp32_score},
            {k: str(v) for k, v in params.items()},
            {},
            {"config.yaml": self.config.to_yaml()},
        )

    def log_trial(
        self, number: int, params: dict, metrics: dict, tags: dict, artifacts: dict[str, str]
    ) -> None:
        """Queue one nested child run for a completed trial."""
        setting = params.get("reduce_range", self.config.quantization.reduce_range)
        tags = {**tags, "reduce_range_resolved": resolve_reduce_range(setting)}
        self._submit(self._log_trial, number, dict(params), dict(metrics), dict(tags), dict(artifacts))

    def _log_trial(
        self, number: int, params: dict, metrics: dict, tags: dict, artifacts: dict[str, str]
    ) -> None:
        if self.parent_id is None:  # the parent could not be opened: its error is raised at the end
            return
        self._child.call(
            "child_run",
            self.experiment_id,
            f"trial-{number}",
            self._trial_tags(number, "COMPLETE", tags),
            {k: float(v) for k, v in metrics.items()},
            {k: str(v) for k, v in params.items()},
            artifacts,
            "FINISHED",
        )

    def log_failure(self, number: int, params: dict, reason: str) -> None:
        """Queue a child run marked FAILED, with the reason as a tag."""
        self._submit(self._log_failure, number, dict(params), reason)

    def _log_failure(self, number: int, params: dict, reason: str) -> None:
        if self.parent_id is None:
            return
        tags = self._trial_tags(number, "FAIL", {TRIAL_FAIL_REASON: reason[:5000]})
        params = {k: str(v) for k, v in params.items()}
        self._child.call("child_run", self.experiment_id, f"trial-{number}", tags, {}, params, {}, "FAILED")

    def _trial_tags(self, number: int, state: str, extra: dict) -> dict[str, str]:
        import onnxruntime

        from autoquant.names import VERSION as __version__

        return {
            "mlflow.parentRunId": self.parent_id,
            "trial_number": str(number),
            "state": state,
            "mode": self.config.search.mode,
            "worker_host": socket.gethostname(),
            "worker_pid": str(os.getpid()),
            "autoquant_version": __version__,
            "onnxruntime_version": onnxruntime.__version__,
            "cpu_isa": target_isa().label,
            **{k: str(v) for k, v in extra.items()},
        }

    def finish(
        self, summary: dict, model_path: Path | None, report_path: Path | None, close_parent: bool = True
    ) -> None:
        """Wait for every queued call; with ``close_parent`` (the last process serving the study),
        first log the summary, the best model (mlflow.onnx flavour) and the report to the parent.

        The wait is bounded by :data:`FINISH_WAIT_S`, and said in one line when it lasts more
        than :data:`FINISH_NOTICE_S`; the calls still queued then are dropped with a warning.

        Raises:
            Exception: The first error of a queued MLflow call.
        """
        if close_parent:
            self._submit(self._finish, summary, model_path, report_path)
        with self._guard:
            pending, self._pending = self._pending, []
        began = time.perf_counter()
        if wait(pending, timeout=FINISH_NOTICE_S).not_done:
            queued = sum(not f.done() for f in pending)
            logger.info(
                "MLflow: waiting for %d queued logging call%s to finish (at most %.0f s)",
                queued,
                "" if queued == 1 else "s",
                FINISH_WAIT_S,
            )
            late = wait(pending, timeout=max(0.0, FINISH_WAIT_S - (time.perf_counter() - began))).not_done
            if late:
                dropped = sum(f.cancel() for f in late)
                logger.warning(
                    "MLflow did not finish logging within %.0f s: %d queued call%s dropped, the one "
                    "running left to end by itself; the study and its outputs are complete",
                    FINISH_WAIT_S,
                    dropped,
                    "" if dropped == 1 else "s",
                )
        waited = time.perf_counter() - began
        self.finish_seconds += waited
        self.seconds += waited
        errors = [f.exception() for f in pending if f.done() and not f.cancelled() and f.exception()]
        if errors:
            raise errors[0]

    def _finish(self, summary: dict, model_path: Path | None, report_path: Path | None) -> None:
        if self.parent_id is None:
            return
        self._child.call(
            "close_parent",
            self.experiment_id,
            self.parent_id,
            summary,
            None if model_path is None else str(model_path),
            None if report_path is None else str(report_path),
        )


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri``, then restore it and ``$MLFLOW_TRACKING_URI``.

    ``mlflow.set_tracking_uri`` also writes the environment variable, which :func:`tracking_uri`
    reads: without the restore, a second study in the same process would log to the wrong store.
    """
    import mlflow

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def make_tracker(config: StudyConfig) -> NullTracker | MlflowTracker:
    """The tracker the config asks for; an ``http(s)://`` store must answer within seconds.

    Raises:
        ConfigError: The tracking server does not answer.
    """
    if not config.tracking.enabled:
        return NullTracker()
    check_reachable(tracking_uri(config), uri_origin(config))
    return MlflowTracker(config)
