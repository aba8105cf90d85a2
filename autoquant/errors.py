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


class UserCodeError(AutoquantError):
    """A user-supplied function (objective, decode, data callable) raised.

    Attributes:
        details: The user code's traceback, shown once by the CLI above the one-line message.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
