"""What reaches the terminal: autoquant's own messages, folded; dependencies' only when verbose.

:func:`quiet_onnxruntime` sets onnxruntime's C++ log (which writes to the process's stderr
directly) to errors only, for every session, including those onnxruntime's quantizer creates.
:class:`LogCapture` is the root logging handler of the command line: repeated autoquant warnings
with the same message template are folded into one line per stage, and dependencies' log records
and Python warnings are counted and summarised at the end of the command, shown only when verbose.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

#: onnxruntime log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
ORT_WARNING, ORT_ERROR = 2, 3
#: Names shown in a folded line before "...".
FOLD_NAMES = 5

_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")
_ort_severity: int | None = None


def quiet_onnxruntime(severity: int | None = None) -> None:
    """Set onnxruntime's default log severity (errors only unless given).

    Without ``severity`` this applies once, and never overrides an earlier explicit choice (the
    command line's ``--verbose``). Library users who want onnxruntime's warnings can call
    ``onnxruntime.set_default_logger_severity(2)`` after importing autoquant.
    """
    global _ort_severity
    if severity is None:
        if _ort_severity is not None:
            return
        severity = ORT_ERROR
    import onnxruntime

    onnxruntime.set_default_logger_severity(severity)
    _ort_severity = severity


def is_ours(name: str) -> bool:
    """Whether a logger name belongs to autoquant."""
    return name == "autoquant" or name.startswith("autoquant.")


def package_of(path: str) -> str:
    """The installed package a source file belongs to (``python`` for the standard library)."""
    parts = Path(path).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].split(".")[0].removesuffix(".py")
    if "autoquant" in parts:
        return "autoquant"
    return "python" if path.startswith(sys.prefix) or path.startswith(sys.base_prefix) else Path(path).stem


def _record_package(record: logging.LogRecord) -> str:
    if record.name in ("root", "py.warnings"):
        return package_of(record.pathname)
    return record.name.split(".")[0]


def _warning_package(filename: str) -> str:
    """The package that called ``warnings.warn``: the first frame outside ``warnings`` and this module
    (``filename`` names the caller's caller when the warning uses ``stacklevel``)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") in ("warnings", __name__):
        frame = frame.f_back
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return name.split(".")[0] if name and name != "__main__" else package_of(filename)


def _spread(spec: str, values: list[Any]) -> str:
    """Differing arguments of one placeholder: numbers as their range (``1 to 784``), others elided."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        try:
            return f"{spec % (min(values),)} to {spec % (max(values),)}"
        except (TypeError, ValueError):
            pass
    return "…"


def _fold(records: list[logging.LogRecord]) -> logging.LogRecord:
    """One record for many with the same template: the first argument (a name) listed, the other
    arguments kept where they agree, shown as their range where numbers differ, else elided."""
    first = records[0]
    args = [r.args if isinstance(r.args, tuple) else (r.args,) for r in records]
    specs = iter(range(len(args[0])))

    def part(match: re.Match[str]) -> str:
        if match.group() == "%%":
            return "%"
        i = next(specs, None)
        if i is None or i == 0:
            return "…"
        if any(a[i] != args[0][i] for a in args):
            return _spread(match.group(), [a[i] for a in args])
        return match.group() % (args[0][i],)

    template = _PLACEHOLDER.sub(part, str(first.msg))
    spec = _PLACEHOLDER.search(str(first.msg))
    names = list(dict.fromkeys((spec.group() if spec else "%s") % (a[0],) for a in args))
    more = ", ..." if len(names) > FOLD_NAMES else ""
    folded = copy.copy(first)
    folded.msg = f"{len(records)} x {template}: {', '.join(names[:FOLD_NAMES])}{more}"
    folded.args = None
    return folded


class LogCapture(logging.Handler):
    """Root handler of the command line, in front of the handler that writes to the terminal.

    - autoquant records pass to ``target``, without tracebacks unless verbose; warnings with
      arguments are held until :meth:`flush_stage`, which writes one line per message template
      (e.g. ``24 x tensor … is constant (0.5 to 3) over the calibration data: 'a', 'b', ...``);
    - other loggers' records and Python warnings are counted per package and shown only when
      verbose; :meth:`finish` returns the summary line.
    """

    def __init__(self, target: logging.Handler, verbose: bool = False) -> None:
        super().__init__(logging.NOTSET)
        self.target = target
        self.verbose = verbose
        self.held: dict[tuple[str, str], list[logging.LogRecord]] = {}
        self.dependencies: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._showwarning: Any = None
        self._saved: tuple[list[logging.Handler], int, int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Route one record (called under the handler's lock)."""
        if not is_ours(record.name):
            self._count(_record_package(record))
            if self.verbose:
                self.target.handle(record)
            return
        if not self.verbose and (record.exc_info or record.stack_info):
            record = copy.copy(record)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        foldable = record.levelno == logging.WARNING and isinstance(record.args, tuple) and record.args
        if self.verbose or not foldable:
            self.target.handle(record)
            return
        self.held.setdefault((record.name, str(record.msg)), []).append(record)

    def _count(self, package: str) -> None:
        with self._count_lock:
            self.dependencies[package] += 1

    def flush_stage(self) -> None:
        """Write the held warnings: each template once, folded when it repeats."""
        with self.lock:
            held, self.held = self.held, {}
        for records in held.values():
            self.target.handle(records[0] if len(records) == 1 else _fold(records))

    def showwarning(
        self, message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any
    ) -> None:
        """``warnings.showwarning`` replacement: count the warning, show it only when verbose."""
        if self.verbose and self._showwarning is not None:
            self._showwarning(message, category, filename, lineno, *rest)
            return
        self._count(_warning_package(filename))

    def install(self, level: int, autoquant_level: int) -> None:
        """Become the root logger's only handler at ``level`` (autoquant's loggers at
        ``autoquant_level``) and capture Python warnings; :meth:`finish` restores all three."""
        root, ours = logging.getLogger(), logging.getLogger("autoquant")
        if self._saved is None:
            self._saved = (root.handlers[:], root.level, ours.level)
        root.handlers = [self]
        root.setLevel(level)
        ours.setLevel(autoquant_level)
        if self._showwarning is None:
            self._showwarning, warnings.showwarning = warnings.showwarning, self.showwarning

    def summary(self) -> str | None:
        """``N warnings from dependencies (onnxruntime 12, mlflow 3); --verbose shows them``."""
        with self._count_lock:
            counts = self.dependencies.most_common()
        total = sum(n for _, n in counts)
        if not total or self.verbose:
            return None
        each = ", ".join(f"{name} {n}" for name, n in counts)
        plural = "s" if total > 1 else ""
        return f"{total} warning{plural} from dependencies ({each}); --verbose shows them"

    def finish(self) -> str | None:
        """Flush the held warnings, restore logging and Python warnings and return :meth:`summary`."""
        self.flush_stage()
        if self._showwarning is not None and warnings.showwarning == self.showwarning:
            warnings.showwarning = self._showwarning
        self._showwarning = None
        if self._saved is not None:
            root = logging.getLogger()
            root.handlers, level, ours = self._saved
            root.setLevel(level)
            logging.getLogger("autoquant").setLevel(ours)
            self._saved = None
        return self.summary()
