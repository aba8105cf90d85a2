"""The objective protocol and the registry of objectives.

An objective scores one model on the test data. A fresh object is created for each evaluation
(:func:`create_objective`); the evaluator calls :meth:`Objective.update` once per batch and
:meth:`Objective.score` at the end, possibly many times with bootstrap ``indices``. Built-in
objectives are registered by name with :func:`register_objective`; users name their own with
``module:function`` or ``path/file.py:function`` (a function or class returning the object).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from autoquant.errors import ConfigError
from autoquant.registry import OBJECTIVES, Registry
from autoquant.usercode import load_callable

AUTO = "auto"


class Objective(Protocol):
    """What the evaluator needs from an objective.

    Contract:
        * ``update(outputs, labels, reference)`` receives one batch: ``outputs`` are the model
          outputs in model output order, batch dimension first; ``labels`` holds one label per
          sample (``int`` for classification, ``list[Box]`` for detection) or is ``None``;
          ``reference`` holds the FP32 model's outputs for the same batch (same structure as
          ``outputs``) or is ``None``. Unusable input raises :class:`~autoquant.errors.DataError`
          saying what was expected and what was received.
        * ``score(indices=None)`` returns the score over every sample seen so far, higher is
          better; with ``indices`` (sample positions, possibly repeated: a bootstrap resample,
          passed positionally), the score of that resample. It raises ``DataError`` when there
          is no sample to score and must not change the state, so it can be called many times.
        * ``needs_labels`` / ``needs_reference`` tell the evaluator what to pass. User objectives
          may omit them (read them with :func:`needs_labels` / :func:`needs_reference`) and may
          implement ``score()`` without ``indices`` (see :func:`supports_resampling`).
    """

    name: str
    needs_labels: bool
    needs_reference: bool

    def update(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> None:
        """Add one batch."""

    def score(self, indices: np.ndarray | None = None) -> float:
        """The score over every sample seen, or over the resample ``indices``."""


ObjectiveT = TypeVar("ObjectiveT", bound=type)
_OBJECTIVES: Registry[type] = OBJECTIVES


def register_objective(name: str) -> Callable[[ObjectiveT], ObjectiveT]:
    """Class decorator registering an objective under ``name`` (a ``test.objective`` value).

    The class is created with no arguments, or with ``decode=`` (the loaded ``test.decode``
    function) if it sets ``needs_decode = True``. The decorator sets its ``name`` attribute.
    """

    def register(cls: ObjectiveT) -> ObjectiveT:
        if name == AUTO or ":" in name:
            raise ValueError(f"objective name {name!r} is reserved: use a plain name without ':'")
        _OBJECTIVES.add(name, cls)
        cls.name = name
        return cls

    return register


def registered_objectives() -> tuple[str, ...]:
    """Names of the registered objectives."""
    return _OBJECTIVES.names()


def needs_labels(objective: Any) -> bool:
    """Whether ``objective`` needs labels (``False`` if it does not say)."""
    return bool(getattr(objective, "needs_labels", False))


def needs_reference(objective: Any) -> bool:
    """Whether ``objective`` compares with the FP32 outputs (``False`` if it does not say)."""
    return bool(getattr(objective, "needs_reference", False))


def objective_name(objective: Any) -> str:
    """The objective's ``name``, or its class name for a user objective without one."""
    return str(getattr(objective, "name", type(objective).__name__))


def _accepts(method: Any, *args: Any) -> bool:
    try:
        inspect.signature(method).bind(*args)
    except (TypeError, ValueError):  # ValueError: no signature available
        return False
    return True


def supports_resampling(objective: Any) -> bool:
    """Whether ``objective.score`` accepts bootstrap ``indices`` as its one positional argument.

    Callers skip the confidence interval for objectives without it.
    """
    return _accepts(objective.score, np.arange(1))


def _user_objective(spec: str) -> Any:
    factory = load_callable(spec, "test.objective", ConfigError)
    try:
        objective = factory()
    except Exception as exc:  # any error of user code
        raise ConfigError(
            f"test.objective: {spec!r}: calling it with no arguments failed ({type(exc).__name__}: {exc})"
        ) from exc
    missing = [method for method in ("update", "score") if not callable(getattr(objective, method, None))]
    if missing:
        raise ConfigError(
            f"test.objective: {spec!r} returned a {type(objective).__name__} without "
            f"{' and '.join(missing)}(); an objective needs update(outputs, labels, reference) and score()"
        )
    if not _accepts(objective.score):
        raise ConfigError(f"test.objective: {spec!r}: its score() must be callable without arguments")
    return objective


def create_objective(name: str, *, has_labels: bool, decode: str | None = None) -> Objective:
    """Create a fresh objective for one evaluation.

    Args:
        name: ``"auto"`` (``top1`` with labels, ``agreement`` without), a registered name, or a
            user spec ``module:function`` / ``path/file.py:function`` naming a callable (a class
            is fine) that returns an objective object.
        has_labels: Whether the test data has labels.
        decode: ``test.decode``: ``module:function`` / ``path/file.py:function`` turning raw
            outputs into detections; required by objectives with ``needs_decode`` (``map``).

    Returns:
        The new objective.

    Raises:
        ConfigError: Unknown name, unloadable or invalid user objective or decode function, a
            missing or unused ``decode``, or an objective that needs labels without labels.
    """
    if name == AUTO:
        name = "top1" if has_labels else "agreement"
    uses_decode = False
    if ":" in name:
        objective = _user_objective(name)
    elif name in _OBJECTIVES:
        cls = _OBJECTIVES.get(name)
        uses_decode = bool(getattr(cls, "needs_decode", False))
        if uses_decode and decode is None:
            raise ConfigError(
                f"test.objective {name!r} needs a decode function: set test.decode to module:function "
                f"or path/file.py:function (example: autoquant.objectives.ssd_decode:decode)"
            )
        objective = cls(decode=load_callable(decode, "test.decode", ConfigError)) if uses_decode else cls()
    else:
        raise ConfigError(
            f"test.objective: unknown objective {name!r}; registered: {', '.join(_OBJECTIVES.names())}, "
            f"{AUTO}, or your own as module:function or path/file.py:function"
        )
    if decode is not None and not uses_decode:
        raise ConfigError(
            f"test.decode is set ({decode!r}) but objective {name!r} does not use it; "
            f"remove test.decode or set test.objective to an objective that decodes outputs (map)"
        )
    if needs_labels(objective) and not has_labels:
        raise ConfigError(
            f"test.objective {name!r} needs labels but the test data has none; set test.labels, "
            f"or use agreement or cosine, which compare with the FP32 model instead"
        )
    return objective
