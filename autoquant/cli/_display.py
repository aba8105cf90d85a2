"""Live display of a study on the terminal (the CLI's :class:`~autoquant.search.Reporter`)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from autoquant.evaluation import ThreadLabel, is_busy
from autoquant.search import EndState, TrialEnd, TrialOutcome, TuneResult, Value, budget_rule, decay_text

#: How a trial without an outcome shows on its line and in the summary table.
_END_MARKS = {EndState.pruned: "[yellow]pruned[/]", EndState.failed: "[red]failed[/]"}


def _decay(outcome: TrialOutcome, budget: float) -> str:
    mark = "[green]within[/]" if outcome.within_budget else "[red]over[/]"
    return f"{decay_text(outcome.decay, outcome.decay_ci, outcome.decay_bound)} {mark} {budget}"


def _interval(ci: tuple[float, float] | None) -> str:
    return f"{ci[0]:+.4f} .. {ci[1]:+.4f}" if ci else "n/a"


class LiveReporter:
    """One progress bar per trial's evaluation, one line per finished trial with the current best."""

    def __init__(self, console: Console, budget: float, total_samples: int) -> None:
        self.console = console
        self.budget = budget
        self.total = total_samples
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task: int | None = None
        self.step_task: int | None = None

    def __enter__(self) -> LiveReporter:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def phase(self, message: str) -> None:
        """Print a phase heading."""
        self.console.print(f"[bold]{message}[/]")

    def trial_started(self, number: int, key: str, params: dict[str, Value]) -> None:
        """Start the trial's evaluation bar."""
        if self.task is not None:
            self._bar.remove_task(self.task)
        self.task = self._bar.add_task(f"trial {number} {key}", total=self.total)

    def progress(self, samples: int) -> None:
        """Advance the evaluation bar."""
        if self.task is not None:
            self._bar.advance(self.task, samples)

    def step(self, done: int, total: int, unit: str) -> None:
        """Show a phase's own progress (e.g. the tensors of the per-layer scale search)."""
        if self.step_task is None:
            self.step_task = self._bar.add_task(unit, total=total)
        self._bar.update(self.step_task, completed=done, total=total)
        if done >= total:
            self._bar.remove_task(self.step_task)
            self.step_task = None

    def trial_finished(
        self, outcome: TrialOutcome | None, failure: TrialEnd | None, best: TrialOutcome | None
    ) -> None:
        """Print the trial's line (its number and key, whether it completed, was pruned or
        failed) and the current best."""
        if self.task is not None:
            self._bar.remove_task(self.task)
            self.task = None
        best_text = f"best #{best.number}" if best else "no best yet"
        if outcome is None:
            self.console.print(f"  {_end_text(failure)}  ({best_text})", highlight=False, soft_wrap=True)
            return
        self.console.print(
            f"  #{outcome.number:<3} {outcome.key:<28} score {outcome.score:.4f}  decay "
            f"{_decay(outcome, self.budget)}  fp32 layers {len(outcome.fp32_compute)}  "
            f"{outcome.latency_ms:.3f} ms {_speedup(outcome.speedups.get(ThreadLabel.ONE))}  ({best_text})",
            highlight=False,
            soft_wrap=True,  # one line per trial, however long
        )


def _end_text(end: TrialEnd | None) -> str:
    """``#3   bisect:17   pruned: after 100 samples: decay +0.0021`` (the reason without the state
    word it may start with)."""
    if end is None:
        return "[red]failed[/]"
    reason = end.reason.removeprefix(end.state.value).lstrip(": ")
    mark = _END_MARKS.get(end.state, f"[yellow]{end.state.value}[/]")
    return f"#{end.number:<3} {end.key:<28} {mark}: {reason}"


def _speedup(value: float | None) -> str:
    return f"{value:.2f}x" if value else "n/a"


def threads_text(label: str) -> str:
    """``1 thread`` or ``default threads``, for a :class:`~autoquant.evaluation.ThreadLabel`."""
    return "1 thread" if label == ThreadLabel.ONE else "default threads"


def load_text(load: float | None) -> str:
    """``load 1.2`` (the 1-minute load average as a latency was measured), or ``load n/a``."""
    return f"load {load:.1f}" if load is not None else "load n/a"


def busy_warning(result: TuneResult) -> str | None:
    """One line saying the machine is busy when the FP32 timings spread above the threshold."""
    if not is_busy(result.latency_tolerance):
        return None
    return (
        f"WARNING: the machine is busy ({load_text(result.fp32_load_average)}, FP32 timings spread "
        f"{result.latency_tolerance:.0%}): the latencies and speedups are uncertain"
    )


def latency_line(result: TuneResult) -> str:
    """The CPU and the FP32 latency at each thread count, e.g. ``x86_64 avx2 (no VNNI); FP32 at
    batch 1: 19.4 ms at 1 thread, 12.1 ms at the default threads``."""
    from autoquant.hardware import host_isa

    cells = [
        f"{ms:.3f} ms at {'the ' if label == ThreadLabel.DEFAULT else ''}{threads_text(label)}"
        for label, ms in result.fp32_latency.items()
    ]
    measured = f"{', '.join(cells)} ({load_text(result.fp32_load_average)})" if cells else "not measured"
    return f"CPU {host_isa().label}; FP32 at batch 1: {measured}"


def summary_table(result: TuneResult) -> Table:
    """The end-of-study table: every completed trial, best first, then the pruned and failed
    trials (marked so), and the verdict."""
    from autoquant.search import ranked

    front = {o.number for o in result.pareto}
    table = Table(
        title=f"study {result.study_name}: FP32 score {result.fp32_score:.4f}, budget {result.budget}; "
        f"within budget: {budget_rule(result.budget, result.budget_confidence)}",
        caption=f"{latency_line(result)}. Speedup = FP32 ms / INT8 ms. Best: within budget, fewest FP32 "
        f"layers run = compute layers onnxruntime runs in FP32 (optimised graph: quantized layers without "
        f"an INT8 kernel count; ops left in float for speed do not), then lowest latency at 1 thread; "
        f"latencies within {result.latency_tolerance:.0%} of each other are ties (the spread of repeated "
        "timings of the FP32 model against itself here), which the smaller decay wins; * = on the Pareto "
        "front of decay, latency and FP32 layers run; "
        + (
            f"first trial within budget after {result.time_to_budget_s:.1f} s"
            if result.time_to_budget_s is not None
            else "no trial within budget"
        ),
    )
    bound = result.budget_confidence
    columns = ("trial", "how", "score", "decay", "95 % CI") + ((f"{bound * 100:g} % bound",) if bound else ())
    for column in (
        *columns,
        "FP32 layers run",
        "float ops",
        "ms, 1 thread",
        "speedup 1 thread",
        "speedup default",
        "",
    ):
        table.add_column(column)
    for o in ranked(result.trials, result.latency_tolerance):
        bounds = (f"{o.decay_bound:+.4f}" if o.decay_bound is not None else "n/a",) if bound else ()
        mark = "best" if result.best and o.number == result.best.number else ""
        style = "green" if o.within_budget else None
        table.add_row(
            f"{o.number}{'*' if o.number in front else ''}",
            o.key,
            f"{o.score:.4f}",
            f"{o.decay:+.4f}",
            _interval(o.decay_ci),
            *bounds,
            str(len(o.fp32_compute)),
            str(len(o.float_nodes)),
            f"{o.latency_ms:.3f}",
            _speedup(o.speedups.get(ThreadLabel.ONE)),
            _speedup(o.speedups.get(ThreadLabel.DEFAULT)),
            mark,
            style=style,
        )
    for end in result.ended:  # the pruned and failed trials, after the ranked ones
        decay = f"{end.decay:+.4f}" if end.decay is not None else "n/a"
        cells = [_interval(end.decay_ci), *(["n/a"] if bound else []), *["n/a"] * 5]
        table.add_row(str(end.number), end.key, "n/a", decay, *cells, _END_MARKS[end.state])
    return table


def best_latency_line(result: TuneResult) -> str:
    """The best trial's speed against FP32 at each thread count, and the CPU."""
    from autoquant.hardware import host_isa

    best = result.best
    cells = []
    for label, fp32_ms in result.fp32_latency.items():
        int8_ms = best.latencies.get(label) if best else None
        if int8_ms:
            cells.append(
                f"{threads_text(label)} INT8 {int8_ms:.3f} ms vs FP32 {fp32_ms:.3f} ms ({fp32_ms / int8_ms:.2f}x)"
            )
    if not cells:
        return f"latency at batch 1 on {host_isa().label}: not measured"
    loads = f"FP32 at {load_text(result.fp32_load_average)}, INT8 at {load_text(best.load_average if best else None)}"
    return f"latency at batch 1 on {host_isa().label}: {'; '.join(cells)} ({loads})"
