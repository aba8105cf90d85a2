"""Which process creates a study's parent MLflow run, decided in the Optuna study itself.

The parent run's id is stored in the study (user attribute ``mlflow_parent_run_id``), so a resumed
study and other workers attach their trials to the same parent. The first process to find no
parent claims its creation in the study, under the study lock (a storage write that takes
milliseconds); the others wait for the id it stores. A claim whose process is gone, or older than
`CLAIM_WAIT_S`, is taken over. None of these functions calls MLflow.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from autoquant.names import STUDY_MLFLOW_CLAIM, STUDY_MLFLOW_PARENT
from autoquant.storage import process_alive

logger = logging.getLogger(__name__)

#: How long a process waits for another live process's claimed parent run before creating one.
CLAIM_WAIT_S = 120.0
#: How often a process waiting for another's parent run reads the study.
_POLL_S = 0.5


def claimed_elsewhere(claim: Any, host: str) -> bool:
    """Whether ``claim`` is another process's that may still store a parent run (``host``: this
    process's host name)."""
    if not isinstance(claim, dict) or time.time() - float(claim.get("at", 0.0)) > CLAIM_WAIT_S:
        return False
    if claim.get("host") != host:
        return True
    pid = claim.get("pid")
    return isinstance(pid, int) and pid > 0 and pid != os.getpid() and process_alive(pid)


def claim_parent(study: Any, storage: Any, host: str, stale: Any = None) -> tuple[str, Any]:
    """Under the study lock: ("reuse", the stored parent id), ("await", another process's
    claim) or ("create", None) once this process holds the claim (``stale``: a claim to take
    over even if its process looks alive)."""
    with storage.lock(study.study_name):
        attrs = study.user_attrs
        stored = attrs.get(STUDY_MLFLOW_PARENT)
        if stored is not None:
            return "reuse", stored
        claim = attrs.get(STUDY_MLFLOW_CLAIM)
        if claim and claim != stale and claimed_elsewhere(claim, host):
            return "await", claim
        study.set_user_attr(STUDY_MLFLOW_CLAIM, {"host": host, "pid": os.getpid(), "at": time.time()})
        return "create", None


def await_parent(study: Any, storage: Any, claim: Any, host: str) -> str | None:
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
        if not claimed_elsewhere(current, host) or time.monotonic() - since > CLAIM_WAIT_S:
            kind, value = storage.call(claim_parent, study, storage, host, current)
            if kind != "await":
                return value
            claim, since = value, time.monotonic()
        time.sleep(_POLL_S)


def store_parent(study: Any, storage: Any, run_id: str, replaces: str | None) -> str:
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
