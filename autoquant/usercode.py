"""Import user code named in a config: ``module:function`` or ``/path/file.py:function``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from autoquant.errors import AutoquantError

_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def code_file(spec: str) -> Path | None:
    """The file of a ``path/file.py:function`` spec, or None for anything else."""
    path, sep, _ = spec.rpartition(".py:")
    return Path(path + ".py") if sep else None


def is_code_spec(spec: str) -> bool:
    """Whether ``spec`` names code: ``path/file.py:function`` or ``package.module:function``."""
    return code_file(spec) is not None or bool(_MODULE_SPEC.match(spec))


def _import_file(path: Path) -> ModuleType:
    """Import a .py file under a module name unique to its resolved path (once per process)."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"_autoquant_user_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None  # always for a .py file
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_callable(spec: str, key: str, error: type[AutoquantError]) -> Callable[..., Any]:
    """Import the function or class named by ``module:function`` or ``/path/file.py:function``.

    Args:
        spec: The config value.
        key: The config key it comes from (``test.objective``, ``calibration.source``, ...).
        error: The error class to raise (the caller's stage).

    Raises:
        AutoquantError: (of class ``error``) The spec is malformed, the import fails, or the
            attribute is missing or not callable.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise error(f"{key}: {spec!r} must be module:function or /path/file.py:function")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            if not path.is_file():
                raise error(f"{key}: {spec!r}: no such file {str(path)!r}")
            module = _import_file(path)
        else:
            module = importlib.import_module(target)
    except AutoquantError:
        raise
    except Exception as exc:  # any import-time error of user code
        raise error(f"{key}: {spec!r}: cannot import {target} ({type(exc).__name__}: {exc})") from exc
    function = getattr(module, name, None)
    if function is None:
        raise error(f"{key}: {spec!r}: {target} has no attribute {name!r}")
    if not callable(function):
        raise error(f"{key}: {spec!r}: {name} is a {type(function).__name__}, expected a function or class")
    return function
