"""autoquant: find the best INT8 post-training quantization of an ONNX model within an accuracy budget."""

from importlib.metadata import PackageNotFoundError, version

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


def tune(config, reporter=None, fresh: bool = False, stop=None):
    """Run or resume the study of ``config`` (see :func:`autoquant.study.tune`)."""
    from autoquant.study import tune as _tune

    return _tune(config, reporter=reporter, fresh=fresh, stop=stop)


def __getattr__(name: str):
    # Imported on first use: ``autoquant.client`` stays light (no pydantic, onnx or optuna).
    if name == "Tuner":
        from autoquant.ask_tell import Tuner

        return Tuner
    if name in ("StudyConfig", "load_config"):
        from autoquant import config

        return getattr(config, name)
    raise AttributeError(f"module 'autoquant' has no attribute {name!r}")


try:
    __version__ = version("autoquant")
except PackageNotFoundError:  # running from a checkout without installation
    __version__ = "0.0.0"

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
