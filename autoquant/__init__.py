"""autoquant: find the best INT8 post-training quantization of an ONNX model within an accuracy budget."""

from importlib.metadata import PackageNotFoundError, version

from autoquant.config import StudyConfig, load_config
from autoquant.errors import (
    AutoquantError,
    CalibrationError,
    ConfigError,
    DataError,
    ModelError,
    QuantizationError,
    UserCodeError,
)

try:
    __version__ = version("autoquant")
except PackageNotFoundError:  # running from a checkout without installation
    __version__ = "0.0.0"

__all__ = [
    "AutoquantError",
    "CalibrationError",
    "ConfigError",
    "DataError",
    "ModelError",
    "QuantizationError",
    "StudyConfig",
    "UserCodeError",
    "__version__",
    "load_config",
]
