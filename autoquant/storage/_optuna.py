"""The one place that reaches into Optuna's private attributes and renamed names: a trial's
storage id, an RDB storage's SQLAlchemy engine, the stale-trial retry callback.

Optuna does not promise these; ``tests/storage/test_storage.py`` checks each against the installed version,
so an upgrade that moves one fails there, not in a study.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (``Trial`` and ``FrozenTrial`` keep it private)."""
    return trial._trial_id


def rdb_engine(backend: optuna.storages.BaseStorage) -> Any:
    """The SQLAlchemy engine of an RDB storage (the study lock runs on its connections)."""
    return backend.engine  # type: ignore[attr-defined]


def retry_callback(max_retry: int | None) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's callback that queues a stale trial again (renamed in Optuna 4.9)."""
    cls = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        or optuna.storages.RetryFailedTrialCallback
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental
        return cls(max_retry=max_retry)
