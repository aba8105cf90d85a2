"""Field types shared by the config sections: paths that resolve against the config's folder,
data sources, user code specs, and the base of every section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, ValidationInfo

from autoquant.usercode import code_file, is_code_spec


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return Path(value.resolve()) if base is not None else value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def resolve_source(value: str, info: ValidationInfo) -> str:
    """Resolve a data source: a path, ``module:function`` or ``file.py:function``."""
    if is_code_spec(value):
        return resolve_code(value, info)
    return str(_resolve_path(Path(value), info))


def resolve_code(value: str, info: ValidationInfo) -> str:
    """Resolve the file of a ``path/file.py:function`` spec; names and ``module:function`` stay."""
    file = code_file(value)
    return f"{_resolve_path(file, info)}:{value.rpartition(':')[2]}" if file is not None else value


def one_of(value: str, names: tuple[str, ...]) -> str:
    """``value`` if it is one of ``names`` (a registry's), else the one error of every such key."""
    if value not in names:
        raise ValueError(f"must be one of {', '.join(names)}, got {value!r}")
    return value


def aliases(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
