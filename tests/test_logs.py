"""The command line's log handler: folded autoquant warnings, counted dependency warnings."""

from __future__ import annotations

import logging
import warnings

import pytest

from autoquant.logs import LogCapture


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.tracebacks += record.exc_info is not None


def _capture(verbose: bool = False) -> tuple[LogCapture, _Lines]:
    lines = _Lines()
    return LogCapture(lines, verbose=verbose), lines


def _record(
    name: str, msg: str, *args: object, level: int = logging.WARNING, package: str = "onnxruntime"
) -> logging.LogRecord:
    """A record as logger ``name`` makes it in a module of ``package``."""
    return logging.LogRecord(name, level, f"/venv/lib/site-packages/{package}/m.py", 1, msg, args, None)


def test_repeated_warnings_fold_into_one_line_per_stage() -> None:
    capture, out = _capture()
    template = "tensor %r is constant (%g) over the calibration data"
    for i in range(100):
        capture.handle(_record("autoquant.engine._thresholds", template, f"t{i}", float(i)))
    capture.handle(_record("autoquant.engine._thresholds", "tensor %r: only once", "z"))
    capture.handle(_record("autoquant.search.pipeline", "an info line", level=logging.INFO))
    assert out.lines == ["an info line"]  # warnings wait for the end of the stage
    capture.flush_stage()
    assert out.lines[1:] == [
        "100 x tensor … is constant (0 to 99) over the calibration data: 't0', 't1', 't2', 't3', 't4', ...",
        "tensor 'z': only once",
    ]
    capture.flush_stage()
    assert len(out.lines) == 3


def test_arguments_that_agree_are_kept() -> None:
    capture, out = _capture()
    for name in ("a", "b"):
        capture.handle(_record("autoquant.x", "layer %s: %d%% of %s", name, 5, "weights"))
    capture.flush_stage()
    assert out.lines == ["2 x layer …: 5% of weights: a, b"]


def test_numbers_that_differ_show_their_range_and_other_arguments_are_elided() -> None:
    capture, out = _capture()
    template = "tensor %r: ignoring %d NaN and %d infinite values in the calibration data"
    for name, nan in (("x", 1), ("conv", 64), ("relu", 5)):
        capture.handle(_record("autoquant.engine._thresholds", template, name, nan, 0))
    for name, kind in (("a", "weights"), ("b", "biases")):
        capture.handle(_record("autoquant.x", "layer %s: %s", name, kind))
    capture.flush_stage()
    assert out.lines == [
        "3 x tensor …: ignoring 1 to 64 NaN and 0 infinite values in the calibration data: 'x', 'conv', 'relu'",
        "2 x layer …: …: a, b",
    ]


def test_verbose_shows_every_line_and_dependencies() -> None:
    capture, out = _capture(verbose=True)
    for name in ("a", "b"):
        capture.handle(_record("autoquant.x", "tensor %r", name))
    capture.handle(_record("root", "Expected bias 'b' to be an initializer"))
    assert out.lines == ["tensor 'a'", "tensor 'b'", "Expected bias 'b' to be an initializer"]
    assert capture.finish() is None


def test_dependency_records_and_warnings_are_counted_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    capture, out = _capture()
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    handlers = logging.getLogger().handlers[:]
    capture.install(logging.WARNING, logging.INFO)
    assert logging.getLogger().handlers == [capture]
    capture.handle(_record("root", "Expected bias 'b' to be an initializer"))
    capture.handle(_record("mlflow.store", "slow"))
    capture.handle(_record("mlflow.store", "slower"))
    namespace = {"__name__": "onnxruntime.quantization.fake", "warnings": warnings}
    exec("def warn():\n    warnings.warn('deprecated thing', UserWarning, stacklevel=2)", namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = capture.showwarning
        namespace["warn"]()
    assert out.lines == []
    assert capture.finish() == "4 warnings from dependencies (onnxruntime 2, mlflow 2); --verbose shows them"
    assert logging.getLogger().handlers == handlers  # restored


def test_tracebacks_of_our_records_need_verbose() -> None:
    capture, out = _capture()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("autoquant.x", logging.ERROR, __file__, 1, "failed", None, True)
        import sys

        record.exc_info = sys.exc_info()
    capture.handle(record)
    assert out.lines == ["failed"] and out.tracebacks == 0
