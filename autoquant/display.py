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

from autoquant.search import TrialOutcome
from autoquant.space import Value
from autoquant.study import TuneResult


def _decay(outcome: TrialOutcome, budget: float) -> str:
    mark = "[green]within[/]" if outcome.within_budget else "[red]over[/]"
    ci = f" [{outcome.decay_ci[0]:+.4f}, {outcome.decay_ci[1]:+.4f}]" if outcome.decay_ci else ""
    return f"{outcome.decay:+.4f}{ci} {mark} {budget}"


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
        self, outcome: TrialOutcome | None, failure: str | None, best: TrialOutcome | None
    ) -> None:
        """Print the trial's line and the current best."""
        if self.task is not None:
            self._bar.remove_task(self.task)
            self.task = None
        best_text = f"best #{best.number}" if best else "no best yet"
        if outcome is None:
            kind = "[yellow]stopped[/]" if failure and failure.startswith("pruned") else "[red]failed[/]"
            self.console.print(f"  {kind}: {failure}  ({best_text})", highlight=False)
            return
        self.console.print(
            f"  #{outcome.number:<3} {outcome.key:<28} score {outcome.score:.4f}  decay "
            f"{_decay(outcome, self.budget)}  fp32 nodes {len(outcome.fp32_nodes)}  "
            f"{outcome.latency_ms:.3f} ms  ({best_text})",
            highlight=False,
        )


def summary_table(result: TuneResult) -> Table:
    """The end-of-study table: every completed trial, best first, and the verdict."""
    from autoquant.search import ranked

    table = Table(
        title=f"study {result.study_name}: FP32 score {result.fp32_score:.4f}, budget {result.budget}",
        caption=f"latencies within {result.latency_tolerance:.0%} of each other are ties (the spread of "
        "repeated timings of the FP32 model against itself here); the smaller decay wins them; "
        + (
            f"first trial within budget after {result.time_to_budget_s:.1f} s"
            if result.time_to_budget_s is not None
            else "no trial within budget"
        ),
    )
    for column in ("trial", "how", "score", "decay", "95 % CI", "FP32 nodes", "latency ms", ""):
        table.add_column(column)
    for o in ranked(result.trials, result.latency_tolerance):
        ci = f"{o.decay_ci[0]:+.4f} .. {o.decay_ci[1]:+.4f}" if o.decay_ci else "n/a"
        mark = "best" if result.best and o.number == result.best.number else ""
        style = "green" if o.within_budget else None
        table.add_row(
            str(o.number),
            o.key,
            f"{o.score:.4f}",
            f"{o.decay:+.4f}",
            ci,
            str(len(o.fp32_nodes)),
            f"{o.latency_ms:.3f}",
            mark,
            style=style,
        )
    return table
