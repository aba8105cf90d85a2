"""Study configuration: one YAML file loaded into frozen, validated objects.

Unknown keys and wrong types are errors that name the file, the key path and its line.
Relative paths resolve against the folder of the config file. Keys known from the older
calibration tools (``accept_int8_decay``, ``calib_iterations``, ``test_iterations``,
``fp32_score``, ``data_preproccess_str``, ...) are accepted under their seed names.

Plugin names (``quantization.method``, ``data.format``, ``data.label_format``) are checked by
asking the registries of :mod:`autoquant.registry`; this package imports no plugin module.
"""

from autoquant.config._load import load_config, parse_config
from autoquant.config._sections import (
    CalibrationConfig,
    DataConfig,
    ModelConfig,
    QuantizationConfig,
    TestConfig,
)
from autoquant.config._study import (
    OutputConfig,
    SearchConfig,
    StorageConfig,
    StudyConfig,
    TrackingConfig,
)

__all__ = [
    "CalibrationConfig",
    "DataConfig",
    "ModelConfig",
    "OutputConfig",
    "QuantizationConfig",
    "SearchConfig",
    "StorageConfig",
    "StudyConfig",
    "TestConfig",
    "TrackingConfig",
    "load_config",
    "parse_config",
]
