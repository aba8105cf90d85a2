"""The terminal of the command line: the two consoles, the log capture and the one-line errors."""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

import typer
from rich.console import Console
from rich.logging import RichHandler

from autoquant.logs import ORT_ERROR, ORT_WARNING, LogCapture, quiet_onnxruntime

#: The exit status of ``tune``, ``worker`` and ``serve`` when the study ended with no trial within
#: the budget (0: a trial is within it; 1: a bug; 2: bad input or a fault; 130: interrupted).
NO_TRIAL_WITHIN_BUDGET = 3

# Outside a terminal (logs, CI, pipes) rich would wrap at 80 columns; lines stay whole instead.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)

#: The root log handler, set up by :func:`setup_logging`: folds our warnings, counts the dependencies'.
_capture: LogCapture | None = None


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Route every logger to stderr at the chosen level; the dependencies' warnings are counted."""
    global _capture
    if _capture is not None:  # set again by --verbose or --quiet after the command
        _capture.finish()
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs and CI: plain lines that are never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    # Our loggers at the chosen level; other libraries' warnings (onnxruntime's quantizer logs on
    # the root logger) are counted and summarised at the end, and shown only with --verbose.
    _capture = LogCapture(handler, verbose=verbose)
    _capture.install(logging.DEBUG if verbose else logging.WARNING, level)
    # MLflow and Optuna log through their own handlers unless told otherwise: route them to ours.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    import optuna

    quiet_onnxruntime(ORT_WARNING if verbose else ORT_ERROR)  # its C++ log goes straight to stderr
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.DEBUG if verbose else optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def is_verbose() -> bool:
    """Whether ``--verbose`` was given."""
    return _capture is not None and _capture.verbose


def end_stage() -> None:
    """Write the warnings held during a stage, each message template once."""
    if _capture is not None:
        _capture.flush_stage()


def finish() -> None:
    """Flush the held warnings and summarise the dependencies' ones."""
    if _capture is not None:
        line = _capture.finish()
        if line:
            console.print(line, style="dim", highlight=False)


def fail(message: str, status: int = 2) -> None:
    """End the command: ``autoquant: error: <line>`` for each line of ``message``, then exit ``status``."""
    for line in message.splitlines() or [message]:
        typer.echo(f"autoquant: error: {line}", err=True)
    raise typer.Exit(status)


def print_cause(exc: BaseException) -> None:
    """With --verbose: the traceback of what caused an autoquant error (its ``__cause__`` chain)."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and is_verbose():
        typer.echo("".join(traceback.format_exception(cause)).rstrip(), err=True)
