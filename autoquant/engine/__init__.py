"""The quantization engine: graph preparation, the FP32 statistics pass, thresholds, QDQ
quantization through onnxruntime's quantizer, requantization, sensitivity analysis and the output
files of one quantized model.
"""

from autoquant.engine._analyze import Sensitivity, analyze, difference, run_outputs
from autoquant.engine._histogram import HistogramCollector
from autoquant.engine._kernels import is_integer_kernel, layers_in_float, session_and_optimized
from autoquant.engine._memory_plan import bytes_per_sample, plan_pass, weightless_copy
from autoquant.engine._methods import ScoredMethod, Side, ThresholdMethod, register_method
from autoquant.engine._ort import int8_kernel_op_types, qdq_quantize, quantizable_op_types, scale_zero_point
from autoquant.engine._outputs import (
    calibration_table,
    check_output_dir,
    clear_leftovers,
    int8_kernels,
    write_files,
    write_outputs,
)
from autoquant.engine._quantize import (
    QuantizedModel,
    activation_quant_params,
    compute_layers,
    float_nodes,
    fp32_nodes,
    quantize_model,
)
from autoquant.engine._rescale import Requantizer
from autoquant.engine._statistics import Statistics, TensorStats, collect_statistics, statistics_key
from autoquant.engine._thresholds import TensorRange, compute_thresholds, methods

__all__ = [
    "HistogramCollector",
    "QuantizedModel",
    "Requantizer",
    "ScoredMethod",
    "Sensitivity",
    "Side",
    "Statistics",
    "TensorRange",
    "TensorStats",
    "ThresholdMethod",
    "activation_quant_params",
    "analyze",
    "bytes_per_sample",
    "calibration_table",
    "check_output_dir",
    "clear_leftovers",
    "collect_statistics",
    "compute_layers",
    "compute_thresholds",
    "difference",
    "float_nodes",
    "fp32_nodes",
    "int8_kernel_op_types",
    "int8_kernels",
    "is_integer_kernel",
    "layers_in_float",
    "methods",
    "plan_pass",
    "qdq_quantize",
    "quantizable_op_types",
    "quantize_model",
    "register_method",
    "run_outputs",
    "scale_zero_point",
    "session_and_optimized",
    "statistics_key",
    "weightless_copy",
    "write_files",
    "write_outputs",
]
