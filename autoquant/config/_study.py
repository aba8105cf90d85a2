"""The search, storage, tracking and output sections, and the whole study config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from autoquant.config._fields import ConfigPath, Section
from autoquant.config._sections import CalibrationConfig, ModelConfig, QuantizationConfig, TestConfig


class SearchConfig(Section):
    """The Optuna study: mode, accuracy budget and stopping rule."""

    mode: Literal["fast", "full"] = "fast"
    accept_int8_decay: float = Field(default=0.005, ge=0.0)
    budget_confidence: float | None = Field(
        default=None,
        description="None: a trial is within budget when its decay is; a level such as 0.95: when "
        "the upper bound of its decay's one-sided interval at that level is.",
    )
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

    @field_validator("budget_confidence", mode="before")
    @classmethod
    def _confidence_level(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 < value < 1.0:
            raise ValueError(
                f"must be a confidence level between 0.5 and 1, e.g. 0.95, or null for the point "
                f"estimate (got {value!r})"
            )
        return value

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


class StorageConfig(Section):
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


class TrackingConfig(Section):
    """MLflow tracking. Without ``uri``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the output folder."""

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


class OutputConfig(Section):
    """Where results are written."""

    directory: ConfigPath = Path("output")


class StudyConfig(Section):
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
