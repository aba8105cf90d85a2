"""Tracking stage: the study as a parent MLflow run, every trial as a nested child run.

Every MLflow call, the parent run's creation included, is made in order by one background daemon
thread, in a process of its own that imports mlflow while the study calibrates
(`autoquant.tracking._process`): trials never wait for MLflow, nor share the interpreter lock
with it, and an interrupted process does not wait for it either. `MlflowTracker.finish`
waits for the queued calls, within a bound.

The parent run's id is stored in the Optuna study (user attribute ``mlflow_parent_run_id``), so a
resumed study and other workers attach their trials to the same parent; the last process to leave
the study closes it. The first process to find no parent claims its creation in the study (under
the study lock, a storage write that takes milliseconds), creates the run in the background and
stores its id; the others wait in the background for that id, with their trial logs queued behind
(`autoquant.tracking._parent`). The store is checked before any calibration work: an unreachable
tracking server fails within seconds.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from autoquant.config import StudyConfig
from autoquant.errors import one_line
from autoquant.names import TRIAL_FAIL_REASON
from autoquant.tracking._child import Background, LoggingProcess
from autoquant.tracking._logged import parent_params, trial_tags, with_resolved_reduce_range
from autoquant.tracking._parent import await_parent, claim_parent, store_parent
from autoquant.tracking._uri import artifact_location, check_reachable, tracking_uri, uri_origin

logger = logging.getLogger(__name__)

#: How long `MlflowTracker.finish` waits for the queued calls; and after how long it says so.
FINISH_WAIT_S = 300.0
FINISH_NOTICE_S = 2.0


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


class MlflowTracker:
    """Logs a study to MLflow with `mlflow.MlflowClient` (no global active run).

    Every MLflow call is made in order by one background thread (see `Background`), in a
    process of its own (`autoquant.tracking._process`: importing mlflow and opening a store are
    seconds of Python that would hold this process's interpreter lock): the opening of the parent
    run (`attach`), the trial logs, which queue behind it, and the parent's closing. Only
    `finish` waits, within `FINISH_WAIT_S`.

    Attributes:
        seconds: Time the study waited for MLflow (``attach_seconds + finish_seconds``).
        attach_seconds: Time `attach` took before the first trial: a claim in the study's
            storage; no MLflow call.
        finish_seconds: Time `finish` waited for the queued calls.
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
        self._worker = Background("autoquant-mlflow")
        self._pending: list[Future] = []
        self._guard = threading.Lock()
        self._warned = False
        self._child = LoggingProcess()
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
                        "MLflow: %s failed (%s); the study goes on, and the error is raised at its end",
                        call.__name__.strip("_").replace("_", " "),
                        one_line(exc),
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
        return self._child.call("experiment", name, artifact_location(self.uri, self.config))

    def attach(self, study: Any, storage: Any, stats_key: str, fp32_score: float) -> None:
        """Queue the opening of the study's parent run, and return at once.

        The stored parent is reused; without one, the first process claims its creation in the
        study (under the study lock: a storage write, no MLflow call), creates it in the
        background and stores its id; the others wait in the background for that id (a claim
        whose process is gone, or older than `CLAIM_WAIT_S`, is taken over). The trial logs
        queue behind it.

        Args:
            study: The Optuna study.
            storage: Its `StudyStorage` (the study lock, retries).
            stats_key: The statistics cache key, a parameter of the parent run.
            fp32_score: The FP32 reference score, a metric of the parent run.
        """
        self.study_name, self.stats_key, self.fp32_score = study.study_name, stats_key, fp32_score
        began = time.perf_counter()
        plan = storage.call(claim_parent, study, storage, self._host)
        self.attach_seconds = time.perf_counter() - began
        self.seconds += self.attach_seconds
        self._submit(self._open_parent, study, storage, plan)

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
            stored = await_parent(study, storage, stored, self._host)
        if stored is not None:
            if self._child.call("reopen", stored):
                self.parent_id = stored
                return
            logger.info("MLflow parent run %s is gone; starting a new one", stored)
        run_id = self._child.call(
            "create_run", self.experiment_id, self.study_name, {"autoquant.search._study": self.study_name}
        )
        kept = storage.call(store_parent, study, storage, run_id, stored)
        if kept != run_id:  # another process stored its parent first: use that one
            self._child.call("delete_run", run_id)
            logger.debug("MLflow: parent run %s was stored first; %s deleted", kept, run_id)
            self.parent_id = kept
            return
        self.parent_id = kept
        self._log_parent_start()

    def _log_parent_start(self) -> None:
        self._child.call(
            "log_run",
            self.parent_id,
            {"fp32_score": self.fp32_score},
            parent_params(self.config, self.stats_key),
            {},
            {"config.yaml": self.config.to_yaml()},
        )

    def log_trial(
        self, number: int, params: dict, metrics: dict, tags: dict, artifacts: dict[str, str]
    ) -> None:
        """Queue one nested child run for a completed trial."""
        tags = with_resolved_reduce_range(self.config, params, tags)
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
            trial_tags(self.config, self.parent_id, number, "COMPLETE", tags),
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
        tags = trial_tags(self.config, self.parent_id, number, "FAIL", {TRIAL_FAIL_REASON: reason[:5000]})
        params = {k: str(v) for k, v in params.items()}
        self._child.call("child_run", self.experiment_id, f"trial-{number}", tags, {}, params, {}, "FAILED")

    def finish(
        self, summary: dict, model_path: Path | None, report_path: Path | None, close_parent: bool = True
    ) -> None:
        """Wait for every queued call; with ``close_parent`` (the last process serving the study),
        first log the summary, the best model (mlflow.onnx flavour) and the report to the parent.

        The wait is bounded by `FINISH_WAIT_S`, and said in one line when it lasts more
        than `FINISH_NOTICE_S`; the calls still queued then are dropped with a warning.

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


def make_tracker(config: StudyConfig) -> NullTracker | MlflowTracker:
    """The tracker the config asks for; an ``http(s)://`` store must answer within seconds.

    Raises:
        ConfigError: The tracking server does not answer.
    """
    if not config.tracking.enabled:
        return NullTracker()
    check_reachable(tracking_uri(config), uri_origin(config))
    return MlflowTracker(config)
