"""What the tracker logs besides metrics: the parent run's parameters and each trial run's tags."""

from __future__ import annotations

import os
import socket

from autoquant.config import StudyConfig
from autoquant.hardware import resolve_reduce_range, target_isa


def parent_params(config: StudyConfig, stats_key: str) -> dict[str, str]:
    """The parameters of a study's parent run, as strings."""
    search = config.search
    params = {
        "mode": search.mode,
        "accept_int8_decay": search.accept_int8_decay,
        "budget_confidence": search.budget_confidence,  # None: the point estimate decides
        "decay": search.decay,
        "stats_cache_key": stats_key,
        "model": str(config.model.path),
        "cpu_isa": target_isa().label,
        "reduce_range_resolved": resolve_reduce_range(config.quantization.reduce_range),
        "equalize": config.quantization.equalize,  # one prepared model per study, not a trial parameter
    }
    return {k: str(v) for k, v in params.items()}


def with_resolved_reduce_range(config: StudyConfig, params: dict, tags: dict) -> dict:
    """``tags`` plus ``reduce_range_resolved``: the trial's ``reduce_range`` (else the config's)
    as the CPU resolves it."""
    setting = params.get("reduce_range", config.quantization.reduce_range)
    return {**tags, "reduce_range_resolved": resolve_reduce_range(setting)}


def trial_tags(
    config: StudyConfig, parent_id: str | None, number: int, state: str, extra: dict
) -> dict[str, str]:
    """The tags of a trial's child run: its parent, number and state, where and with what it ran,
    and ``extra``."""
    import onnxruntime

    from autoquant.names import VERSION as __version__

    return {
        "mlflow.parentRunId": parent_id,
        "trial_number": str(number),
        "state": state,
        "mode": config.search.mode,
        "worker_host": socket.gethostname(),
        "worker_pid": str(os.getpid()),
        "autoquant_version": __version__,
        "onnxruntime_version": onnxruntime.__version__,
        "cpu_isa": target_isa().label,
        **{k: str(v) for k, v in extra.items()},
    }
