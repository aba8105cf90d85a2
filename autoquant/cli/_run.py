"""``tune``, ``worker`` and ``serve``: a study run with the live display, stopped by Ctrl-C after
the current trial."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import typer

from autoquant.cli._console import NO_TRIAL_WITHIN_BUDGET, console, fail, out
from autoquant.cli._display import best_latency_line, busy_warning, summary_table
from autoquant.cli._stage import StageReporter
from autoquant.cli._tables import node_list
from autoquant.config import StudyConfig
from autoquant.hardware import describe
from autoquant.names import REPORT_FILE, Command, model_file
from autoquant.search import TuneResult, decay_text

#: Runs the study: ``runner(config, reporter, stop)``.
StudyRunner = Callable[[StudyConfig, StageReporter, threading.Event], TuneResult]


def run_study(
    cfg: StudyConfig,
    fresh: bool,
    command: Command,
    threads: int | None,
    runner: StudyRunner | None = None,
) -> None:
    """Run the study of ``cfg`` with the live display (default runner: :func:`autoquant.search.tune`)
    and print its table and the best trial; Ctrl-C stops after the current trial. A study with no
    trial within the budget ends with :data:`NO_TRIAL_WITHIN_BUDGET` and a last line naming the
    closest trial."""
    from autoquant.engine.graph import set_session_threads
    from autoquant.search import tune

    set_session_threads(threads)
    samples = (
        0 if command is Command.SERVE else cfg.test.test_iterations or 0
    )  # a client's samples are not seen
    reporter = StageReporter(console, cfg.search.accept_int8_decay, samples)
    stop = threading.Event()
    if runner is None:

        def runner(cfg: StudyConfig, reporter: StageReporter, stop: threading.Event) -> TuneResult:
            return tune(cfg, reporter=reporter, fresh=fresh, stop=stop.is_set, command=command)

    result = _interruptible(cfg, reporter, stop, runner)
    if stop.is_set():
        if result is not None:
            out.print(summary_table(result))
        fail(f"interrupted; the best model so far is in {cfg.output.directory}", status=130)
    out.print(summary_table(result))
    _print_best(cfg, result)
    best = result.best
    if best is not None and not best.within_budget:
        out.print(
            f"no trial within budget: the closest is trial {best.number} ({best.key}), decay "
            f"{decay_text(best.decay, best.decay_ci, best.decay_bound)} against the budget {result.budget}; its model is "
            f"{model_file(False)}, not {model_file(True)} (exit status {NO_TRIAL_WITHIN_BUDGET})",
            highlight=False,
            soft_wrap=True,  # the last line stays one line
        )
        raise typer.Exit(NO_TRIAL_WITHIN_BUDGET)


def _interruptible(
    cfg: StudyConfig, reporter: StageReporter, stop: threading.Event, runner: StudyRunner
) -> TuneResult | None:
    """``runner``'s result, or None when Ctrl-C stopped it; a first Ctrl-C once a trial has
    started sets ``stop`` (the study ends after the trial), a second one aborts at once."""

    def on_ctrl_c(signum: int, frame: object) -> None:
        if not reporter.trials_started:  # calibration or the FP32 reference: stop at once
            raise KeyboardInterrupt
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once
        console.print("stopping after the current trial (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        with reporter:
            return runner(cfg, reporter, stop)
    except KeyboardInterrupt:
        if not reporter.trials_started:
            raise  # handle_errors: "interrupted", exit status 130
        stop.set()
        return None
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_best(cfg: StudyConfig, result: TuneResult) -> None:
    """The best trial, its speed, the CPU and the output folder; no trial at all fails."""
    best = result.best
    if best is None:
        fail("no trial completed")
    verdict = "within" if best.within_budget else "OVER"
    out.print(
        f"best: trial {best.number} ({best.key}), decay {decay_text(best.decay, best.decay_ci, best.decay_bound)} "
        f"{verdict} the budget {result.budget}; FP32 nodes: {node_list(best.fp32_nodes, result.output)}"
    )
    out.print(best_latency_line(result))
    if warning := busy_warning(result):
        out.print(warning)
    cpu = describe(best.params.get("reduce_range", cfg.quantization.reduce_range))
    out.print(
        f"CPU: {cpu['cpu_isa']}; reduce_range {cpu['reduce_range']}: {str(cpu['reduce_range_resolved']).lower()}"
    )
    out.print(f"outputs: {result.output} (model: {model_file(best.within_budget)}, report: {REPORT_FILE})")
