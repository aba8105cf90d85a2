"""The model, data and quantization sections of a study config."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from autoquant.config._fields import ConfigPath, Section, aliases, one_of, resolve_code, resolve_source
from autoquant.registry import DATA_READERS, LABEL_FORMATS, OBJECTIVES, THRESHOLD_METHODS


class ModelConfig(Section):
    """The FP32 ONNX model."""

    path: ConfigPath
    inputs: dict[str, list[int]] = Field(
        default_factory=dict,
        validation_alias=aliases("inputs", "input_data_shape"),
        description="Input name -> shape (batch dim first). Empty: read from the model.",
    )
    outputs: list[str] = Field(
        default_factory=list,
        validation_alias=aliases("outputs", "output_data_name"),
        description="Output names to evaluate. Empty: every model output.",
    )
    output_batch_axes: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Output name -> its batch axis, for outputs that are not batch-first. Empty: found "
        "by running the model on one and on two samples.",
    )


class DataConfig(Section):
    """A data set: an image list or folder, .npy/.npz files, an LMDB folder or a Python callable."""

    source: Annotated[str, AfterValidator(resolve_source)] | None = Field(
        default=None,
        validation_alias=aliases(
            "source", "calib_image_source", "test_image_source", "calib_lmdb_path", "test_lmdb_path"
        ),
    )
    format: str = Field(default="auto", description="auto, or a registered data reader (numpy, images, ...).")
    labels: ConfigPath | None = None
    label_format: str = "classification"
    data_preprocess_str: str | None = Field(
        default=None, validation_alias=aliases("data_preprocess_str", "data_preproccess_str")
    )
    image_data_preprocess: str = Field(
        default="user_defined", validation_alias=aliases("image_data_preprocess", "image_data_preproccess")
    )
    on_decode_error: Literal["stop", "skip"] = "stop"
    allow_nonfinite: bool = Field(
        default=False,
        description="Read float samples holding NaN or infinity (with a warning naming them) instead "
        "of refusing them.",
    )
    batch_size: int = Field(default=1, ge=1)

    #: The config section this data set is read from, for messages.
    section: ClassVar[str] = "data"

    @field_validator("format")
    @classmethod
    def _registered_reader(cls, value: str) -> str:
        return one_of(value, ("auto", *DATA_READERS.names()))

    @field_validator("label_format")
    @classmethod
    def _known_label_format(cls, value: str) -> str:
        return one_of(value, LABEL_FORMATS.names())


class CalibrationConfig(DataConfig):
    """Calibration data and the statistics pass."""

    section: ClassVar[str] = "calibration"

    calib_iterations: int = Field(default=0, ge=0, description="Samples to use; 0 means all.")
    histogram_bins: int = Field(
        default=8192,
        validation_alias=aliases("histogram_bins", "histogram_bin_num"),
        description="Fine histogram bins per sign, a power of two; coarser bins are derived from it.",
    )
    cache_dir: ConfigPath | None = None
    memory_budget_mb: int = Field(
        default=512,
        ge=16,
        description="MB of activations the statistics pass keeps alive at once; larger models run in "
        "sub-batches, or in several passes over the data, one per group of tensors.",
    )
    bias_correction_samples: int = Field(
        default=32,
        ge=1,
        description="The first calibration samples on which quantization.bias_correction measures "
        "the mean error of each layer (one pass over the FP32 model, one per quantized model).",
    )

    @field_validator("histogram_bins")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 1024 or value & (value - 1):
            raise ValueError(f"must be a power of two >= 1024, got {value}")
        return value


class TestConfig(DataConfig):
    """Test data used to score a quantized model."""

    section: ClassVar[str] = "test"

    test_iterations: int = Field(default=0, ge=0, description="Samples to use; 0 means all.")
    objective: Annotated[str, AfterValidator(resolve_code)] = Field(
        default="auto", description="auto: top1 with labels, agreement without."
    )
    decode: Annotated[str, AfterValidator(resolve_code)] | None = Field(
        default=None, description="map objective: module:function turning raw outputs into boxes."
    )

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        if value == "auto" or ":" in value or value in OBJECTIVES:
            return value
        raise ValueError(
            f"must be auto, a registered objective ({', '.join(OBJECTIVES.names())}) or your own as "
            f"module:function or path/file.py:function, got {value!r}"
        )


class QuantizationConfig(Section):
    """The choices for one quantization; every one of them is also a search parameter."""

    per_channel: bool = False
    depthwise_per_channel: bool = False
    activation_scheme: Literal["symmetric", "asymmetric"] = "asymmetric"
    method: str = Field(default="kl", validation_alias=aliases("method", "th_method"))
    bins: int = Field(default=2048, validation_alias=aliases("bins", "bin"))
    max_percentile: float = Field(default=0.99999, gt=0.0, le=1.0)
    ratio_search: bool = False
    start_ratio: float = Field(default=0.7, gt=0.0)
    end_ratio: float = Field(default=1.3, gt=0.0)
    step_ratio: float = Field(default=0.01, gt=0.0)
    first_layer_fp32: bool = False
    equalize: bool = Field(
        default=False,
        description="Cross-layer equalization before the statistics: fold BatchNormalization into "
        "Convs and rescale consecutive Conv/Gemm layers (through ReLU or nothing) so that their "
        "per-channel weight ranges match; FP32 outputs stay the same. Not a search parameter yet.",
    )
    norm_layers_fp32: bool = Field(
        default=True,
        description="Keep the element-wise ops of decomposed LayerNorm/RMSNorm in FP32.",
    )
    first_input_unsigned: bool = Field(
        default=False, validation_alias=aliases("first_input_unsigned", "first_conv_force_u8")
    )
    enable_concat_quantize: bool = True
    op_types: Literal["all", "compute", "ort_int8"] = "all"
    float_ops: Literal["none", "activations", "elementwise"] = Field(
        default="none",
        description="Ops left in float for speed (not counted as FP32 layers): activations = the "
        "decomposed GELU and SiLU activations, run as onnxruntime's fused kernel; elementwise = "
        "those and every element-wise arithmetic op (Add, Mul, Div, Sigmoid, ...).",
    )
    nodes_to_exclude: list[str] = Field(
        default_factory=list, validation_alias=aliases("nodes_to_exclude", "exclude_op")
    )
    fp32_layers: int = Field(default=0, ge=0)
    layer_scales: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)
    reduce_range: Literal["auto"] | bool = Field(
        default="auto",
        description="7-bit weights; auto: on x86-64 CPUs without VNNI (see autoquant.hardware).",
    )
    bias_correction: bool = Field(
        default=False,
        description="After quantizing, add to each quantized Conv/Gemm/MatMul bias the mean "
        "difference between its FP32 and quantized outputs per output channel, measured on "
        "calibration.bias_correction_samples calibration samples.",
    )

    @field_validator("method")
    @classmethod
    def _registered_method(cls, value: str) -> str:
        return one_of(value, THRESHOLD_METHODS.names())

    @field_validator("bins")
    @classmethod
    def _multiple_of_128(cls, value: int) -> int:
        if value < 128 or value % 128:
            raise ValueError(f"must be a multiple of 128 (2048 is recommended), got {value}")
        return value

    @model_validator(mode="after")
    def _method_and_ratio_range(self) -> QuantizationConfig:
        THRESHOLD_METHODS.get(self.method).check(self)  # the method's own checks
        if self.ratio_search and self.start_ratio >= self.end_ratio:
            raise ValueError(f"start_ratio ({self.start_ratio}) must be below end_ratio ({self.end_ratio})")
        return self
