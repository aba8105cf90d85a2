"""Loading a study config from YAML: one line per problem, naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autoquant.config._study import StudyConfig
from autoquant.errors import ConfigError
from autoquant.usercode import code_file, is_code_spec


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
