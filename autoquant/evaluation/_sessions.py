"""onnxruntime sessions for evaluation and one batch through them: a failure to load or run is an
`EvaluationError`, and each output's batch axis is found once and moved first."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from autoquant.data import Batch
from autoquant.engine.graph import session_for, session_options
from autoquant.errors import ConfigError, EvaluationError, one_line

logger = logging.getLogger(__name__)


def session_or_error(
    model: onnx.ModelProto | bytes | Path | ort.InferenceSession, what: str, threads: int = 0
) -> ort.InferenceSession:
    """A session for ``model`` (or ``model`` itself) with ``threads`` intra-op threads (0: the
    default); an onnxruntime failure is an `EvaluationError`."""
    if isinstance(model, ort.InferenceSession):
        return model
    try:
        return session_for(model, session_options(threads)) if threads else session_for(model)
    except Exception as exc:
        raise EvaluationError(f"onnxruntime cannot load the {what} ({one_line(exc)})") from exc


def run_batch(
    session: ort.InferenceSession, names: list[str], batch: Batch, axes: list[int] | None = None
) -> list[np.ndarray]:
    """``session.run`` on one batch, each output's batch axis moved first (``axes``); an onnxruntime
    failure is an `EvaluationError` naming the samples."""
    try:
        values = session.run(names, batch.inputs)
    except Exception as exc:
        ids = batch.sample_ids
        raise EvaluationError(
            f"onnxruntime cannot run the model on test samples {ids[0]}..{ids[-1]} ({one_line(exc)})"
        ) from exc
    return [np.moveaxis(v, a, 0) if a else v for v, a in zip(values, axes or [0] * len(values), strict=True)]


def find_batch_axes(
    session: ort.InferenceSession, names: list[str], probe: Batch | None, configured: dict[str, int]
) -> list[int]:
    """Each output's batch axis: as configured, else the one axis whose size follows the batch.

    The model runs on the first sample of ``probe`` and on its first two; an output's batch axis
    is the one axis of size 1 then 2. Without a probe (a model whose batch size is fixed) the
    axis is 0.

    Raises:
        ConfigError: Several axes follow the batch, or none does, and ``model.output_batch_axes``
            does not name the axis.
    """
    if probe is None or all(name in configured for name in names):
        return [configured.get(name, 0) for name in names]
    one = {k: v[:1] for k, v in probe.inputs.items()}
    two = {k: v[:2] for k, v in probe.inputs.items()}
    shapes = [[np.shape(o) for o in session.run(names, feed)] for feed in (one, two)]
    axes = []
    for name, first, second in zip(names, *shapes, strict=True):
        if name in configured:
            axes.append(configured[name])
            continue
        moving = [i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b]
        if len(first) == len(second) and len(moving) == 1 and (first[moving[0]], second[moving[0]]) == (1, 2):
            axes.append(moving[0])
            continue
        raise ConfigError(
            f"output {name!r}: cannot tell its batch axis (shape {tuple(first)} for 1 sample, "
            f"{tuple(second)} for 2); set model.output_batch_axes: {{{name}: <axis>}}"
        )
    moved = [f"{n} (axis {a})" for n, a in zip(names, axes, strict=True) if a]
    if moved:
        logger.info("outputs that are not batch-first: %s", ", ".join(moved))
    return axes
