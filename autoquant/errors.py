"""Exceptions raised by autoquant.

Every error derives from :class:`AutoquantError`; each pipeline stage has its own subclass.
Messages say what was wrong, the value received and, where possible, the fix. Only the CLI
turns them into one-line messages and exit status 2.
"""

from __future__ import annotations

import errno


class AutoquantError(Exception):
    """Root of every error autoquant raises on bad input."""


class ConfigError(AutoquantError):
    """The YAML config is unreadable or invalid."""


class DataError(AutoquantError):
    """A calibration or test sample, label file or data source is unusable."""


class ModelError(AutoquantError):
    """The ONNX model is missing, corrupt or cannot be prepared for quantization."""


class CalibrationError(AutoquantError):
    """Statistics or thresholds cannot be computed."""


class QuantizationError(AutoquantError):
    """The quantized model cannot be built or does not load."""


class EvaluationError(AutoquantError):
    """onnxruntime cannot create a session for a model, run it on the test data or time it."""


class SearchError(AutoquantError):
    """A study ended without any completed trial."""


class StorageError(AutoquantError):
    """The study's storage cannot be used: it stays unreachable, or the stored study was started
    with another model, other data or other search settings."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception from outside autoquant, on one line of at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or "no message"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


class OutputError(AutoquantError):
    """The output folder cannot be used: it is a file, it is not writable, or the disk is full."""


#: errno values that mean "the machine refuses the write", not "autoquant has a bug".
_WRITE_FAULTS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another --output",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another --output",
    errno.EROFS: "read-only file system; choose another --output",
    errno.EACCES: "permission denied; choose another --output or fix the folder's permissions",
    errno.EPERM: "operation not permitted; choose another --output or fix the folder's permissions",
}
_SQLITE_FAULTS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
    "unable to open database file": errno.EACCES,
}


def write_fault(exc: BaseException) -> str | None:
    """One line for a write the machine refused (full disk, read-only, no permission), found anywhere
    in the exception's cause chain, including SQLite's own messages; None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_FAULTS:
            where = current.filename or "a file"
            return f"{where}: {_WRITE_FAULTS[current.errno]}"
        text = str(current).lower()
        for needle, code in _SQLITE_FAULTS.items():
            if needle in text:
                which = "the MLflow store" if text.startswith("mlflow:") else "the study or tracking database"
                return f"{which}: {needle}; {_WRITE_FAULTS[code]}"
        current = current.__cause__ or current.__context__
    return None


class UserCodeError(AutoquantError):
    """A user-supplied function (objective, decode, data callable) raised.

    Attributes:
        details: The user code's traceback, shown once by the CLI above the one-line message.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


# Not errors: they change the course of a search and pass through every stage unchanged.
class SearchStopped(Exception):
    """The search must stop (timeout or a stop request); not an error."""


class TrialReturned(Exception):
    """The scorer gave the trial back without a score (a remote client abandoned it or went
    silent): the trial is failed with this reason and runs again."""
