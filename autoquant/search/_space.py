"""Search spaces as data: each quantization choice is an Optuna distribution declared in YAML.

A space file has ``parameters`` and, optionally, ``strategies``::

    parameters:
      method: {choices: [kl, mse, percentile]}
      max_percentile: {choices: [1.0, 0.99999], when: {method: [percentile]}}
      bins: {int: {low: 1024, high: 8192, step: 128}}
      ratio_range:
        choices: [narrow, wide]
        when: {ratio_search: [true]}
        sets: {narrow: {start_ratio: 0.7, end_ratio: 1.3}, wide: {start_ratio: 0.3, end_ratio: 1.7}}
      fp32_layers: {int: {low: 0, high: null}, search: bisect}
    strategies:
      - {name: default}
      - {name: per_channel, per_channel: true}

``strategies_from: fast`` takes the strategies of another space.

A parameter is named after a ``quantization`` key, unless it has ``sets``, which map each choice to
several keys. ``when`` makes a parameter conditional on earlier ones. ``search: bisect`` marks a
parameter that the sampler leaves alone and the blacklist bisection sets (``high: null``: the number
of quantizable nodes). Strategies are partial parameter sets; the config's values fill the rest.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoquant.config import QuantizationConfig
from autoquant.errors import ConfigError

Value = bool | int | float | str
#: Quantization keys that change the prepared model (and so its statistics): one value per study.
_PREPARATION_KEYS = frozenset({"equalize"})


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    high: float | None = None
    step: float | None = None
    log: bool = False


class Parameter(BaseModel):
    """One searchable choice."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = ""
    choices: list[Value] | None = None
    int_range: _Range | None = Field(default=None, alias="int")
    float_range: _Range | None = Field(default=None, alias="float")
    when: dict[str, list[Value]] = Field(default_factory=dict)
    sets: dict[str, dict[str, Any]] | None = None
    search: Literal["sample", "bisect"] = "sample"

    @model_validator(mode="after")
    def _one_distribution(self) -> Parameter:
        kinds = [k for k in (self.choices, self.int_range, self.float_range) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choices, int or float")
        if self.sets is not None and (self.choices is None or set(map(str, self.choices)) != set(self.sets)):
            raise ValueError("sets needs a choices list naming exactly its keys")
        return self

    def distribution(self, nodes: int) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution (``high: null`` means the number of quantizable nodes)."""
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.choices)
        r = self.int_range or self.float_range
        high = nodes if r.high is None else r.high
        if self.int_range is not None:
            return optuna.distributions.IntDistribution(
                int(r.low), int(high), step=int(r.step or 1), log=r.log
            )
        return optuna.distributions.FloatDistribution(r.low, high, step=r.step, log=r.log)

    def active(self, params: dict[str, Value]) -> bool:
        """Whether the parameter applies, given the values chosen so far."""
        return all(params.get(name) in allowed for name, allowed in self.when.items())

    def fields(self, value: Value) -> dict[str, Any]:
        """The ``quantization`` keys that ``value`` sets."""
        return dict(self.sets[str(value)]) if self.sets is not None else {self.name: value}

    def value_of(self, config: QuantizationConfig) -> Value:
        """The value that reproduces ``config`` (the first choice whose set matches, for sets)."""
        if self.sets is None:
            return getattr(config, self.name)
        for choice in self.choices:
            if all(getattr(config, k) == v for k, v in self.sets[str(choice)].items()):
                return choice
        return self.choices[0]


class SearchSpace(BaseModel):
    """The parameters and the known-good strategies of a search mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters: dict[str, Parameter]
    strategies: list[dict[str, Value]] = Field(default_factory=list)
    source: str = ""

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        fields = set(QuantizationConfig.model_fields)
        seen: list[str] = []
        for name, p in self.parameters.items():
            object.__setattr__(p, "name", name)
            targets = set().union(*p.sets.values()) if p.sets else {name}
            if not targets <= fields:
                raise ValueError(f"parameter {name!r}: {sorted(targets - fields)} are not quantization keys")
            if targets & _PREPARATION_KEYS:
                raise ValueError(
                    f"parameter {name!r}: {sorted(targets & _PREPARATION_KEYS)} change the prepared model "
                    "and are not searchable yet; set them in the config's quantization section"
                )
            if not set(p.when) <= set(seen):
                raise ValueError(f"parameter {name!r}: 'when' may only name parameters declared before it")
            seen.append(name)
        for strategy in self.strategies:
            unknown = set(strategy) - set(self.parameters) - {"name"}
            if unknown:
                raise ValueError(
                    f"strategy {strategy.get('name', strategy)!r} sets undeclared {sorted(unknown)}"
                )
            for name, value in strategy.items():
                choices = None if name == "name" else self.parameters[name].choices
                if choices is not None and value not in choices:
                    raise ValueError(
                        f"strategy {strategy.get('name', strategy)!r}: {name}: {value!r} is not one of "
                        f"the parameter's choices {choices}"
                    )
        return self

    def sampled(self) -> list[Parameter]:
        """Parameters the sampler chooses, in declaration order."""
        return [p for p in self.parameters.values() if p.search == "sample"]

    def suggest(
        self, trial: optuna.Trial, base: QuantizationConfig, nodes: int, bisect: bool = False
    ) -> dict[str, Value]:
        """Ask ``trial`` for every active parameter (enqueued values come back as they were).

        ``search: bisect`` parameters are asked only when ``bisect`` is set; otherwise they keep
        ``base``'s value and are not recorded as trial parameters.
        """
        params: dict[str, Value] = {}
        for p in self.parameters.values():
            if not p.active(params):
                continue
            if p.search == "sample" or bisect:
                params[p.name] = _ask(trial, p.name, p.distribution(nodes))
        return params

    def complete(self, partial: dict[str, Value], base: QuantizationConfig) -> dict[str, Value]:
        """Fill a partial parameter set (a strategy) from ``base``; inactive parameters are dropped.

        Raises:
            ConfigError: A value taken from ``base`` is not among the parameter's choices.
        """
        params: dict[str, Value] = {}
        for p in self.parameters.values():
            value = partial.get(p.name, p.value_of(base))
            if not p.active(params):
                continue
            if p.name not in partial and p.sets is None and p.choices is not None and value not in p.choices:
                raise ConfigError(
                    f"quantization.{p.name}={value!r} is not a choice of the search parameter {p.name} "
                    f"in {self.source or 'the search space'} ({p.choices}); add it with search.overrides"
                )
            params[p.name] = value
        return params

    def apply(self, params: dict[str, Value], base: QuantizationConfig) -> QuantizationConfig:
        """The quantization config of ``params``: ``base`` with every parameter's keys set."""
        update: dict[str, Any] = {}
        for name, value in params.items():
            update.update(self.parameters[name].fields(value))
        return QuantizationConfig.model_validate({**base.model_dump(), **update})


def _ask(trial: optuna.Trial, name: str, d: optuna.distributions.BaseDistribution) -> Value:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)


def load_space(source: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Load a space: a built-in name (``fast``, ``full``) or a YAML path, with ``search.overrides``.

    An override maps a parameter to a fixed value (it becomes a one-choice parameter) or to a new
    parameter definition.

    Raises:
        ConfigError: The file is missing or invalid.
    """
    if isinstance(source, Path) or str(source).endswith((".yaml", ".yml")):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the search space ({exc.strerror})") from None
        where = str(path)
    else:
        try:
            text = resources.files("autoquant.search_spaces").joinpath(f"{source}.yaml").read_text()
        except FileNotFoundError:
            raise ConfigError(f"no built-in search space {source!r}; use fast, full or a YAML path") from None
        where = f"search_spaces/{source}.yaml"
    try:
        data = yaml.safe_load(text) or {}
        parameters = dict(data.get("parameters") or {})
        if "strategies_from" in data:  # e.g. full mode runs the fast strategies first
            data["strategies"] = load_space(data.pop("strategies_from")).strategies
        strategies = list(data.get("strategies") or [])
        for name, override in (overrides or {}).items():
            parameters[name] = override if isinstance(override, dict) else {"choices": [override]}
            if not isinstance(override, dict):  # a fixed value holds in every strategy too
                strategies = [{**strategy, name: override} for strategy in strategies]
        space = {**data, "parameters": parameters, "strategies": strategies, "source": where}
        return SearchSpace.model_validate(space)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: YAML syntax error: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        where = f"{where}: {loc}" if loc else where
        raise ConfigError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
