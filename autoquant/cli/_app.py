"""Command-line interface: a thin layer over :mod:`autoquant.search`.

Every command takes the study config path and ``--output DIR``. Bad input ends with one line per
problem on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.exceptions import TyperException

from autoquant.cli import _tables as tables
from autoquant.cli._command import CliCommand, CliGroup, QuietOpt, VerboseOpt
from autoquant.cli._console import (
    NO_TRIAL_WITHIN_BUDGET,
    console,
    end_stage,
    fail,
    finish,
    is_verbose,
    out,
    print_cause,
    setup_logging,
)
from autoquant.cli._run import run_study
from autoquant.cli._stage import StageReporter
from autoquant.config import StudyConfig, load_config
from autoquant.errors import AutoquantError, one_line, write_fault
from autoquant.hardware import target_isa
from autoquant.names import VERSION as __version__
from autoquant.names import Command
from autoquant.search import TuneResult

app = typer.Typer(
    name="autoquant",
    help="Find the best INT8 post-training quantization of an ONNX model within an accuracy budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=CliGroup,
)

#: The exit statuses of the commands that run a study (their help's epilog).
STUDY_EXIT_STATUS = (
    f"Exit status: 0 a trial is within the budget (model.int8.onnx); {NO_TRIAL_WITHIN_BUDGET} no trial "
    "is, the closest one is written as model.over-budget.int8.onnx; 2 bad input or a fault; "
    "1 a bug; 130 interrupted."
)

ConfigArg = Annotated[
    Path, typer.Argument(help="The study config (YAML).", show_default=False, metavar="CONFIG")
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output folder; overrides the config's output.directory."),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Ignore the statistics cache.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Delete the stored study and start over.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="onnxruntime threads per session (default: one per core); with several processes on one "
        "machine, cores / processes.",
    ),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"autoquant {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    setup_logging(verbose, quiet)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn autoquant errors into one line each and exit status 2; Ctrl-C into status 130.

    Any other error is a bug or a dependency's failure: one line and exit status 1, with the
    traceback only under --verbose.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AutoquantError as exc:
            print_cause(exc)
            details = getattr(exc, "details", "")
            if details:
                typer.echo(details.rstrip(), err=True)
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", status=130)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:
            fault = write_fault(exc)  # a full disk or a read-only folder is the machine's, not a bug
            if fault is not None and not is_verbose():
                fail(fault)
            if is_verbose():
                raise
            fail(f"unexpected {one_line(exc)} (--verbose shows the traceback)", status=1)
        finally:
            finish()

    return wrapper


def load(config_path: Path, output: Path | None, writes: bool = True) -> StudyConfig:
    """Load a config and apply ``--output``; a bad ``AUTOQUANT_TARGET_ISA`` fails here too, and so
    does an output folder that cannot be written (for the commands that write one)."""
    from autoquant.engine import check_output_dir

    target_isa()
    config = load_config(config_path, require_paths=True)
    if output is not None:
        config = config.replace(output={"directory": output.resolve()})
    if writes:
        check_output_dir(config.output.directory)
    return config


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields a function that advances it by n."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total if total and total > 0 else None)
        yield lambda n: bar.advance(task, n)


@app.command(cls=CliCommand)
@handle_errors
def quantize(config: ConfigArg, output: OutputOpt = None, no_cache: NoCacheOpt = False) -> None:
    """Quantize once with the config's choices and write the INT8 model and calibration tables."""
    from collections import Counter

    from autoquant.engine import compute_layers, layers_in_float, session_and_optimized, write_outputs
    from autoquant.search import pipeline

    cfg = load(config, output)
    graph = pipeline.load_graph(cfg)
    end_stage()
    with progress_bar("FP32 statistics pass", pipeline.expected_samples(cfg, graph)) as advance:
        calibrated = pipeline.calibrate(cfg, progress=advance, use_cache=not no_cache, graph=graph)
    end_stage()
    result = pipeline.quantize(calibrated, cfg.quantization)
    written = write_outputs(result, cfg, cfg.output.directory)
    # the optimized graph's files stay in the cache folder
    _, optimized = session_and_optimized(result.model, pipeline.cache_dir(cfg))
    kernels = Counter(n.op_type for n in optimized.graph.node)
    layers = compute_layers(calibrated.graph, [n.name for n in calibrated.graph.nodes])
    in_float = layers_in_float(result.model, optimized, layers)
    end_stage()
    samples = calibrated.stats.samples
    table = tables.quantize_table(
        cfg, result, samples, kernels, written.model.parent, (in_float, len(layers))
    )
    out.print(table)


@app.command(cls=CliCommand)
@handle_errors
def evaluate(
    config: ConfigArg,
    output: OutputOpt = None,
    int8: Annotated[
        Path | None, typer.Option("--int8", help="INT8 model to score; default <output>/model.int8.onnx.")
    ] = None,
) -> None:
    """Score the FP32 and INT8 models on the test set: decay with its 95 % interval, and latency."""
    from autoquant.evaluation import compare_latency
    from autoquant.names import MODEL_FILE, OVER_BUDGET_MODEL_FILE
    from autoquant.search import pipeline

    cfg = load(config, output, writes=False)
    int8_path = int8 or cfg.output.directory / MODEL_FILE
    if not int8_path.is_file() and (cfg.output.directory / OVER_BUDGET_MODEL_FILE).is_file() and int8 is None:
        fail(
            f"{int8_path}: no INT8 model within the budget; the study's closest trial is "
            f"{OVER_BUDGET_MODEL_FILE}: pass --int8 {cfg.output.directory / OVER_BUDGET_MODEL_FILE} to score it"
        )
    if not int8_path.is_file():
        fail(f"{int8_path}: no INT8 model; run `autoquant quantize {config}` first or pass --int8")
    graph = pipeline.load_graph(cfg)
    evaluator = pipeline.evaluator(cfg, graph)
    total = len(evaluator.reader)
    end_stage()
    with progress_bar("FP32 reference", total) as advance:
        evaluator.fp32_objective(advance)
    end_stage()
    with progress_bar("INT8 evaluation", total) as advance:
        result = evaluator.evaluate(int8_path, advance)
    end_stage()
    feed = pipeline.sample_feeds(cfg, graph, 1)[0]
    latency = compare_latency(graph.prepared_path, int8_path, feed)
    table = tables.evaluate_table(cfg, evaluator.objective_label, result, latency, int8_path)
    out.print(table)


@app.command(cls=CliCommand)
@handle_errors
def analyze(config: ConfigArg, output: OutputOpt = None) -> None:
    """Rank layers by how much quantizing each alone hurts; write sensitivity.json/.csv and report.html."""
    from autoquant.engine import write_files
    from autoquant.names import REPORT_FILE, SENSITIVITY_CSV_FILE, SENSITIVITY_FILE
    from autoquant.search import pipeline, render_report, sensitivity_csv

    cfg = load(config, output)
    graph = pipeline.load_graph(cfg)
    end_stage()
    with progress_bar("FP32 statistics pass", pipeline.expected_samples(cfg, graph)) as advance:
        calibrated = pipeline.calibrate(cfg, progress=advance, graph=graph)
    end_stage()
    with progress_bar("per-layer analysis", len(graph.nodes)) as advance:
        sensitivity = pipeline.analyze_layers(cfg, calibrated, advance)
    end_stage()
    html = render_report(
        sensitivity,
        f"autoquant sensitivity: {cfg.model.path.name}",
        tables.sensitivity_details(cfg, sensitivity),
    )
    paths = write_files(
        cfg.output.directory,
        {
            SENSITIVITY_FILE: sensitivity.to_json().encode(),
            SENSITIVITY_CSV_FILE: sensitivity_csv(sensitivity).encode(),
            REPORT_FILE: html.encode(),
        },
    )
    table = tables.sensitivity_table(sensitivity)
    out.print(table)
    out.print(f"report: {paths[2]}")


@app.command(cls=CliCommand, epilog=STUDY_EXIT_STATUS)
@handle_errors
def tune(
    config: ConfigArg, output: OutputOpt = None, fresh: FreshOpt = False, threads: ThreadsOpt = None
) -> None:
    """Search for the best INT8 model within the budget (resumes the stored study, or joins it
    with the workers of a shared storage)."""
    run_study(load(config, output), fresh, Command.TUNE, threads)


@app.command(cls=CliCommand, epilog=STUDY_EXIT_STATUS)
@handle_errors
def worker(config: ConfigArg, output: OutputOpt = None, threads: ThreadsOpt = None) -> None:
    """Join the study at the config's shared storage (PostgreSQL, a journal file) and run its trials
    until it is done; start one on each machine."""
    run_study(load(config, output), False, Command.WORKER, threads)


@app.command(cls=CliCommand, epilog=STUDY_EXIT_STATUS)
@handle_errors
def serve(
    config: ConfigArg,
    output: OutputOpt = None,
    fresh: FreshOpt = False,
    threads: ThreadsOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than loopback, a token is required.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: a free one).")] = 8765,
    trials: Annotated[int, typer.Option(min=1, help="Trials out with clients at once.")] = 2,
    trial_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds a client may stay silent before its trial is handed out again."),
    ] = 300.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body, in MiB.")] = 64.0,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the token clients must send (default: AUTOQUANT_TOKEN)."),
    ] = None,
    linger: Annotated[
        float, typer.Option(min=0, help="Seconds to go on answering 'finished' after the study ends.")
    ] = 5.0,
) -> None:
    """Serve the study over HTTP to clients that evaluate each trial in their own environment with
    their own code (autoquant.serve.client.RemoteTuner); the API is at /openapi.json."""
    import time

    from autoquant.errors import ConfigError
    from autoquant.serve import Desk, HttpServer, check_binding, make_app, serve_study

    token = os.environ.get("AUTOQUANT_TOKEN") or None
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: {exc.strerror or exc}") from exc
    check_binding(host, token)

    def run(cfg: StudyConfig, reporter: StageReporter, stop: threading.Event) -> TuneResult:
        desk = Desk(cfg, trial_timeout, stop)
        with HttpServer(make_app(desk, token, int(max_body_mb * 2**20)), host, port) as server:
            guard = "token required" if token else "no token: this machine only"
            console.print(f"serving the study at {server.url} ({guard}); API: {server.url}/openapi.json")
            try:
                return serve_study(cfg, desk, reporter, trials, fresh=fresh)
            finally:
                if not stop.is_set():
                    time.sleep(linger)  # clients that ask now are told the study is finished

    run_study(load(config, output), fresh, Command.SERVE, threads, run)


@app.command(cls=CliCommand)
@handle_errors
def status(config: ConfigArg, output: OutputOpt = None) -> None:
    """Show a stored study's trials, its best so far and the processes serving it, without running anything."""
    import time

    from autoquant.cli._display import summary_table
    from autoquant.search import stored_status

    result, seen = stored_status(load(config, output, writes=False))
    out.print(summary_table(result))
    out.print(f"{len(result.trials)} completed and {result.failed} failed trials in {result.storage}")
    now = time.time()
    recent = tables.recent_processes(seen, now)
    if recent:
        out.print(tables.processes_table(recent, now))
    if len(seen) > len(recent):
        out.print(f"{len(seen) - len(recent)} processes served the study earlier")


@app.command(cls=CliCommand)
@handle_errors
def templates() -> None:
    """Print the named image preprocessing templates and their strings."""
    from autoquant.data import TEMPLATES

    for name, spec in TEMPLATES.items():
        typer.echo(f"{name}: {spec}")


@app.command(cls=CliCommand)
@handle_errors
def check(config: ConfigArg, output: OutputOpt = None) -> None:
    """Validate the config, the model and every sample of the data, and print the plan; writes nothing."""
    from autoquant.search import pipeline

    cfg = load(config, output, writes=False)
    counts = pipeline.check_data(cfg, pipeline.input_specs(cfg), every_sample=True)
    graph = pipeline.load_graph(cfg, persist=False)
    table = tables.plan_table(config, cfg, graph, counts)
    out.print(table)


def main() -> None:
    """Entry point of the ``autoquant`` console script.

    An interrupted command (exit status 130) ends at once, once its output is flushed: the
    interpreter's own shutdown would take a second or more (it tears down onnxruntime, Optuna's
    storage and every module) and would wait for threads still importing or logging. Everything
    the command wrote is whole by then (files are written atomically, the stores commit per call),
    and the stored study resumes.
    """
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - raised outside a command
        _exit_now(130)
    except SystemExit as exc:
        if exc.code == 130:
            _exit_now(130)
        raise


def _exit_now(status: int) -> None:
    """Flush the output and the log handlers, then end the process without the interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
