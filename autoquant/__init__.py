"""autoquant: find the best INT8 post-training quantization of an ONNX model within an accuracy budget."""

from autoquant.errors import (
    AutoquantError,
    CalibrationError,
    ConfigError,
    DataError,
    EvaluationError,
    ModelError,
    OutputError,
    QuantizationError,
    SearchError,
    StorageError,
    UserCodeError,
)
from autoquant.names import VERSION


def tune(config, reporter=None, fresh: bool = False, stop=None):
    """Run or resume the study of ``config`` (see :func:`autoquant.search.tune`)."""
    from autoquant.search import tune as _tune

    return _tune(config, reporter=reporter, fresh=fresh, stop=stop)


def __getattr__(name: str):
    # Imported on first use: ``autoquant.serve.client`` stays light (no pydantic, onnx or optuna).
    if name == "Tuner":
        from autoquant.search import Tuner

        return Tuner
    if name in ("StudyConfig", "load_config"):
        from autoquant import config

        return getattr(config, name)
    raise AttributeError(f"module 'autoquant' has no attribute {name!r}")


__version__ = VERSION

__all__ = [
    "AutoquantError",
    "CalibrationError",
    "ConfigError",
    "DataError",
    "EvaluationError",
    "ModelError",
    "OutputError",
    "QuantizationError",
    "SearchError",
    "StorageError",
    "StudyConfig",
    "Tuner",
    "UserCodeError",
    "__version__",
    "load_config",
    "tune",
]
