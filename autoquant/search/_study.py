"""The study behind ``autoquant tune`` and ``autoquant worker``: run a study and keep its best model
on disk.

The study lives in an Optuna storage, so the same command resumes it; ``fresh=True`` deletes it
first. The embedded default, SQLite ``study.db`` in the output folder, serves one ``tune`` (the
output folder's lock refuses a second). A shared storage (PostgreSQL, a journal file) serves any
number of ``tune`` and ``worker`` processes, which split the work through it
(:mod:`autoquant.search`, :mod:`autoquant.search`); a trial whose process died is found by
Optuna's heartbeat and run again. The best trial's outputs are rewritten after every improving
trial, with ``best_config.yaml`` (``autoquant quantize best_config.yaml`` reproduces the model),
and ``study_summary.json`` when a process ends.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import replace

from optuna.trial import TrialState

from autoquant.config import StudyConfig
from autoquant.errors import ConfigError, SearchError, SearchStopped, StorageError
from autoquant.names import TRIAL_FAIL_REASON, Command
from autoquant.search._driver import Driver
from autoquant.search._naming import serving, storage_url
from autoquant.search._open import OpenSearch, open_search
from autoquant.search._outputs import finish
from autoquant.search._summary import TuneResult, stored_status, study_result
from autoquant.search._trial import NullReporter, Reporter, Scorer
from autoquant.storage import Heartbeat, StorageKind, WorkerRecord, display_url, storage_kind

__all__ = ["OpenSearch", "TuneResult", "drive", "open_search", "serving", "stored_status", "tune"]

logger = logging.getLogger(__name__)


def tune(
    config: StudyConfig,
    reporter: Reporter | None = None,
    fresh: bool = False,
    stop: Callable[[], bool] | None = None,
    scorer: Scorer | None = None,
    command: Command = Command.TUNE,
) -> TuneResult:
    """Run (or resume, or join) the study described by ``config``.

    Args:
        config: The study config.
        reporter: Receives phase, trial and progress events (e.g. a live display).
        fresh: Delete a stored study of the same name and start over.
        stop: Polled between trials; when it returns True the study ends after the current trial
            (the CLI sets it on Ctrl-C). ``search.timeout`` ends the study the same way.
        scorer: Who scores the models (:class:`~autoquant.search.Scorer`); default: the test set
            with ``test.objective``. The ask-and-tell :class:`~autoquant.search.Tuner` passes
            the user's code.
        command: ``tune``, or ``worker`` for a process that joins a shared study (``autoquant
            worker``), which needs a storage several processes share.

    Returns:
        The best trial and every completed one.

    Raises:
        AutoquantError: Bad config, model or data (before any trial).
        SearchError: No trial could complete, or another process is tuning into the same
            output folder (embedded SQLite storage).
        StorageError: The stored study was started with another model, data or settings, or the
            database stays unreachable.
    """
    url = storage_url(config)
    kind = storage_kind(url)
    if kind == StorageKind.SQLITE and command == Command.WORKER:
        raise ConfigError(
            f"storage.url {display_url(url)}: `autoquant worker` needs a storage that several processes "
            "share: set storage.url to postgresql+psycopg://user:password@host/db or to a journal file on "
            "a shared filesystem (/shared/study.log); SQLite serves one `autoquant tune`"
        )
    with serving(config):
        return drive(open_search(config, reporter or NullReporter(), fresh, stop, scorer, command))


def drive(
    search: OpenSearch,
    slot: int = 0,
    idle: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    may_claim: Callable[[], bool] | None = None,
) -> TuneResult:
    """Run the study's trials, then write the summary (and close MLflow's parent run if this is
    the last process serving the study).

    Args:
        search: The opened study.
        slot: Which of this process's drivers this is (the server runs several, one per trial
            handed out at once).
        idle: Entered while the driver waits for others' trials (see :class:`~autoquant.search.Driver`).
        may_claim: Asked before each claim (see :class:`~autoquant.search.Driver`).
    """
    ctx, study, storage, command, fp32_score = (
        search.ctx,
        search.study,
        search.storage,
        search.command,
        search.fp32_score,
    )
    config = ctx.inputs.config
    worker = WorkerRecord(storage, study, command, slot=slot)
    driver = Driver(ctx, study, storage, worker, idle or contextlib.nullcontext, may_claim or (lambda: True))
    try:
        reason = driver.drive()
        logger.log(
            logging.INFO if slot == 0 else logging.DEBUG, "study %r done: %s", study.study_name, reason
        )
    except SearchStopped:
        logger.info("the search stopped before its end (timeout or a stop request)")
    except StorageError:
        raise  # the database is gone: nothing more can be read or written
    finally:
        if sys.exc_info()[0] is not StorageError:
            result = replace(
                storage.call(study_result, config, study, fp32_score), timings=dict(ctx.caches.stages)
            )
            if result.trials:
                with Heartbeat(storage, worker, None):  # seen alive while it waits for the lock
                    driver.sync_outputs()
                    last = worker.leave()
                finish(config, result, ctx.observers.tracker, last)
    if not result.trials:
        failures = [
            t.user_attrs.get(TRIAL_FAIL_REASON, "") for t in study.trials if t.state == TrialState.FAIL
        ]
        last = next((f for f in reversed(failures) if f), "unknown")
        raise SearchError(
            f"no trial of study {study.study_name!r} completed ({len(failures)} failed); the last failure: "
            f"{last}; fix it, then run again with --fresh"
        )
    return result
