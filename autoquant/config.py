"""Study configuration: one YAML file loaded into frozen, validated objects.

Unknown keys and wrong types are errors that name the file, the key path and its line.
Relative paths resolve against the folder of the config file. Keys known from the older
calibration tools (``accept_int8_decay``, ``calib_iterations``, ``test_iterations``,
``fp32_score``, ``data_preproccess_str``, ...) are accepted under their seed names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autoquant.errors import ConfigError
from autoquant.usercode import code_file, is_code_spec


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return Path(value.resolve()) if base is not None else value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def _resolve_source(value: str, info: ValidationInfo) -> str:
    """Resolve a data source: a path, ``module:function`` or ``file.py:function``."""
    if is_code_spec(value):
        return _resolve_code(value, info)
    return str(_resolve_path(Path(value), info))


def _resolve_code(value: str, info: ValidationInfo) -> str:
    """Resolve the file of a ``path/file.py:function`` spec; names and ``module:function`` stay."""
    file = code_file(value)
    return f"{_resolve_path(file, info)}:{value.rpartition(':')[2]}" if file is not None else value


def _one_of(value: str, names: tuple[str, ...]) -> str:
    """``value`` if it is one of ``names`` (a registry's), else the one error of every such key."""
    if value not in names:
        raise ValueError(f"must be one of {', '.join(names)}, got {value!r}")
    return value


def _aliases(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(_Section):
    """The FP32 ONNX model."""

    path: ConfigPath
    inputs: dict[str, list[int]] = Field(
        default_factory=dict,
        validation_alias=_aliases("inputs", "input_data_shape"),
        description="Input name -> shape (batch dim first). Empty: read from the model.",
    )
    outputs: list[str] = Field(
        default_factory=list,
        validation_alias=_aliases("outputs", "output_data_name"),
        description="Output names to evaluate. Empty: every model output.",
    )
    output_batch_axes: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Output name -> its batch axis, for outputs that are not batch-first. Empty: found "
        "by running the model on one and on two samples.",
    )


class DataConfig(_Section):
    """A data set: an image list or folder, .npy/.npz files, an LMDB folder or a Python callable."""

    source: Annotated[str, AfterValidator(_resolve_source)] | None = Field(
        default=None,
        validation_alias=_aliases(
            "source", "calib_image_source", "test_image_source", "calib_lmdb_path", "test_lmdb_path"
        ),
    )
    format: str = Field(default="auto", description="auto, or a registered data reader (numpy, images, ...).")
    labels: ConfigPath | None = None
    label_format: str = "classification"
    data_preprocess_str: str | None = Field(
        default=None, validation_alias=_aliases("data_preprocess_str", "data_preproccess_str")
    )
    image_data_preprocess: str = Field(
        default="user_defined", validation_alias=_aliases("image_data_preprocess", "image_data_preproccess")
    )
    on_decode_error: Literal["stop", "skip"] = "stop"
    batch_size: int = Field(default=1, ge=1)

    @field_validator("format")
    @classmethod
    def _registered_reader(cls, value: str) -> str:
        from autoquant.data import registered_readers

        return _one_of(value, ("auto", *registered_readers()))

    @field_validator("label_format")
    @classmethod
    def _known_label_format(cls, value: str) -> str:
        from autoquant.data._labels import LABEL_FORMATS

        return _one_of(value, LABEL_FORMATS)


class CalibrationConfig(DataConfig):
    """Calibration data and the statistics pass."""

    calib_iterations: int = Field(default=0, ge=0, description="Samples to use; 0 means all.")
    histogram_bins: int = Field(
        default=8192,
        validation_alias=_aliases("histogram_bins", "histogram_bin_num"),
        description="Fine histogram bins per sign, a power of two; coarser bins are derived from it.",
    )
    cache_dir: ConfigPath | None = None
    memory_budget_mb: int = Field(
        default=512,
        ge=16,
        description="MB of activations the statistics pass keeps alive at once; larger models run in "
        "sub-batches, or in several passes over the data, one per group of tensors.",
    )

    @field_validator("histogram_bins")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 1024 or value & (value - 1):
            raise ValueError(f"must be a power of two >= 1024, got {value}")
        return value


class TestConfig(DataConfig):
    """Test data used to score a quantized model."""

    test_iterations: int = Field(default=0, ge=0, description="Samples to use; 0 means all.")
    objective: Annotated[str, AfterValidator(_resolve_code)] = Field(
        default="auto", description="auto: top1 with labels, agreement without."
    )
    decode: Annotated[str, AfterValidator(_resolve_code)] | None = Field(
        default=None, description="map objective: module:function turning raw outputs into boxes."
    )


class QuantizationConfig(_Section):
    """The choices for one quantization; every one of them is also a search parameter."""

    per_channel: bool = False
    depthwise_per_channel: bool = False
    activation_scheme: Literal["symmetric", "asymmetric"] = "asymmetric"
    method: str = Field(default="kl", validation_alias=_aliases("method", "th_method"))
    bins: int = Field(default=2048, validation_alias=_aliases("bins", "bin"))
    max_percentile: float = Field(default=0.99999, gt=0.0, le=1.0)
    ratio_search: bool = False
    start_ratio: float = Field(default=0.7, gt=0.0)
    end_ratio: float = Field(default=1.3, gt=0.0)
    step_ratio: float = Field(default=0.01, gt=0.0)
    first_layer_fp32: bool = False
    norm_layers_fp32: bool = Field(
        default=True,
        description="Keep the element-wise ops of decomposed LayerNorm/RMSNorm in FP32.",
    )
    first_input_unsigned: bool = Field(
        default=False, validation_alias=_aliases("first_input_unsigned", "first_conv_force_u8")
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
        default_factory=list, validation_alias=_aliases("nodes_to_exclude", "exclude_op")
    )
    fp32_layers: int = Field(default=0, ge=0)
    layer_scales: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)
    reduce_range: Literal["auto"] | bool = Field(
        default="auto",
        description="7-bit weights; auto: on x86-64 CPUs without VNNI (see autoquant.hardware).",
    )

    @field_validator("method")
    @classmethod
    def _registered_method(cls, value: str) -> str:
        from autoquant.engine import methods

        return _one_of(value, methods())

    @field_validator("bins")
    @classmethod
    def _multiple_of_128(cls, value: int) -> int:
        if value < 128 or value % 128:
            raise ValueError(f"must be a multiple of 128 (2048 is recommended), got {value}")
        return value

    @model_validator(mode="after")
    def _ratio_range(self) -> QuantizationConfig:
        if self.ratio_search:
            if self.method in ("max", "percentile"):
                raise ValueError(
                    f"ratio_search needs a divergence method (kl, symkl, jsd, mse), got method={self.method!r}"
                )
            if self.start_ratio >= self.end_ratio:
                raise ValueError(
                    f"start_ratio ({self.start_ratio}) must be below end_ratio ({self.end_ratio})"
                )
        return self


class SearchConfig(_Section):
    """The Optuna study: mode, accuracy budget and stopping rule."""

    mode: Literal["fast", "full"] = "fast"
    accept_int8_decay: float = Field(default=0.005, ge=0.0)
    decay: Literal["absolute", "relative"] = "absolute"
    fp32_score: float | None = None
    n_trials: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0.0, description="Seconds.")
    space: ConfigPath | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    data_limit: int = Field(default=8, ge=1)
    ignore_layer_list: list[str] = Field(default_factory=list)
    study_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _auto_calib(cls, data: Any) -> Any:
        if isinstance(data, dict) and "auto_calib" in data:
            data = dict(data)
            auto_calib = data.pop("auto_calib")
            if not isinstance(auto_calib, bool):
                raise ValueError(f"auto_calib must be true or false, got {auto_calib!r}")
            data.setdefault("mode", "full" if auto_calib else "fast")
        return data


class StorageConfig(_Section):
    """Where the Optuna study lives. Default: ``study.db`` (SQLite) in the output folder, for one
    process; ``postgresql+psycopg://...`` or a journal file (``*.log``) for several workers."""

    url: str | None = None
    heartbeat_interval: int = Field(
        default=5, ge=1, description="Seconds between the heartbeats of a running trial (shared storages)."
    )
    grace_period: int = Field(
        default=30,
        ge=1,
        description="Seconds without a heartbeat after which a running trial is failed and run again.",
    )
    max_retry: int = Field(default=3, ge=0, description="How often a trial whose worker died is run again.")
    retry_timeout: float = Field(
        default=60.0, gt=0.0, description="Seconds to retry a database that does not answer before giving up."
    )

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> StorageConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period}) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval}), e.g. 6 heartbeats"
            )
        return self


class TrackingConfig(_Section):
    """MLflow tracking. Without ``uri``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the output folder."""

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


class OutputConfig(_Section):
    """Where results are written."""

    directory: ConfigPath = Path("output")


class StudyConfig(_Section):
    """A whole study, as described by one YAML file."""

    model: ModelConfig
    calibration: CalibrationConfig
    test: TestConfig = Field(default_factory=TestConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _validate_missing_sections(cls, data: Any) -> Any:
        # Missing sections are validated from {} so that their defaults see the path context.
        if isinstance(data, dict):
            data = {**{name: {} for name in _OPTIONAL_SECTIONS}, **data}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        if self.calibration.source is None:
            raise ValueError(
                "calibration.source is required: an image list or folder, npy/npz, LMDB or callable"
            )
        if self.quantization.bins > self.calibration.histogram_bins:
            raise ValueError(
                f"quantization.bins ({self.quantization.bins}) must not exceed "
                f"calibration.histogram_bins ({self.calibration.histogram_bins})"
            )
        return self

    def replace(self, **sections: Any) -> StudyConfig:
        """Return a new config with whole sections or ``section={key: value}`` updates applied."""
        data = self.model_dump()
        for name, value in sections.items():
            if isinstance(value, dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return StudyConfig.model_validate(data)

    def to_yaml(self) -> str:
        """Serialise the resolved config (absolute paths) so that :func:`load_config` reads it back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_OPTIONAL_SECTIONS = ("test", "quantization", "search", "storage", "tracking", "output")


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the YAML key at ``loc``, or of its deepest existing parent."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling; configs/reference.yaml lists every key)"
    if error["type"] == "missing":
        return "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error",) and "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return message


def parse_config(text: str, path: Path, require_paths: bool = False) -> StudyConfig:
    """Validate YAML text as a study config, resolving relative paths against ``path``'s folder.

    With ``require_paths``, the model, label files and data sources it names must exist.
    """
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping with a 'model' and a 'calibration' section")
    try:
        config = StudyConfig.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(node, loc)
            where = f"{path}:{line}" if line else str(path)
            lines.append((line or 0, f"{where}: {key}: {_describe(error)}"))
        raise ConfigError("\n".join(text for _, text in sorted(lines))) from None
    problems = sorted(_missing_paths(config, node, path)) if require_paths else []
    if problems:
        raise ConfigError("\n".join(text for _, text in problems))
    return config


def _missing_paths(config: StudyConfig, node: yaml.Node | None, path: Path) -> list[tuple[int, str]]:
    """``(line, message)`` for every file or folder the config names that is not there."""
    wanted: list[tuple[tuple[str, ...], Path | None, str]] = [
        (("model", "path"), config.model.path, "file"),
        (("calibration", "labels"), config.calibration.labels, "file"),
        (("test", "labels"), config.test.labels, "file"),
    ]
    for section, data in (("calibration", config.calibration), ("test", config.test)):
        source = data.source
        if source is not None and (code_file(source) is not None or not is_code_spec(source)):
            wanted.append(((section, "source"), code_file(source) or Path(source), "file or folder"))
    problems = []
    for loc, target, kind in wanted:
        if target is None or (target.is_file() if kind == "file" else target.exists()):
            continue
        line = _line_of(node, loc)
        where = f"{path}:{line}" if line else str(path)
        what = "is a folder, not a file" if target.is_dir() else f"no such {kind}"
        problems.append((line or 0, f"{where}: {'.'.join(loc)}: {target}: {what}"))
    return problems


def load_config(path: str | Path, require_paths: bool = False) -> StudyConfig:
    """Load and validate a study config file.

    Args:
        path: The YAML file.
        require_paths: Also check that the model, label files and data sources it names exist
            (the command line does, so that a wrong path fails before any work).

    Returns:
        The validated, frozen config with every path absolute.

    Raises:
        ConfigError: The file is missing, is not valid YAML, does not validate, or (with
            ``require_paths``) names a file or folder that is not there.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    return parse_config(text, path, require_paths)
