"""Exceptions raised by autoquant.

Every error derives from :class:`AutoquantError`; each pipeline stage has its own subclass.
Messages say what was wrong, the value received and, where possible, the fix. Only the CLI
turns them into one-line messages and exit status 2.
"""

from __future__ import annotations


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


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception from outside autoquant, on one line of at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or "no message"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


class UserCodeError(AutoquantError):
    """A user-supplied function (objective, decode, data callable) raised.

    Attributes:
        details: The user code's traceback, shown once by the CLI above the one-line message.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
