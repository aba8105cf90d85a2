"""Command-line interface: a thin layer over :mod:`autoquant.search`.

Every command takes the study config path and ``--output DIR``. Bad input ends with one line per
problem on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.exceptions import TyperException

from autoquant.config import StudyConfig, load_config
from autoquant.errors import AutoquantError, write_fault
from autoquant.hardware import describe, target_isa
from autoquant.logs import ORT_ERROR, ORT_WARNING, LogCapture, quiet_onnxruntime
from autoquant.names import VERSION as __version__

app = typer.Typer(
    name="autoquant",
    help="Find the best INT8 post-training quantization of an ONNX model within an accuracy budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Outside a terminal (logs, CI, pipes) rich would wrap at 80 columns; lines stay whole instead.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)

#: The root log handler, set up by the callback: folds our warnings, counts the dependencies'.
_capture: LogCapture | None = None

ConfigArg = Annotated[Path, typer.Argument(help="The study config (YAML).", show_default=False)]
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
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show debug messages, dependencies' warnings and error tracebacks."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show warnings and errors only.")] = False,
) -> None:
    global _capture
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


def end_stage() -> None:
    """Write the warnings held during a stage, each message template once."""
    if _capture is not None:
        _capture.flush_stage()


def _fail(message: str, status: int = 2) -> None:
    for line in message.splitlines() or [message]:
        typer.echo(f"autoquant: error: {line}", err=True)
    raise typer.Exit(status)


def _print_cause(exc: BaseException) -> None:
    """With --verbose: the traceback of what caused an autoquant error (its ``__cause__`` chain)."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and _capture is not None and _capture.verbose:
        typer.echo("".join(traceback.format_exception(cause)).rstrip(), err=True)


def _finish() -> None:
    """Flush the held warnings and summarise the dependencies' ones."""
    if _capture is not None:
        line = _capture.finish()
        if line:
            console.print(line, style="dim", highlight=False)


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
            _print_cause(exc)
            details = getattr(exc, "details", "")
            if details:
                typer.echo(details.rstrip(), err=True)
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", status=130)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:
            fault = write_fault(exc)  # a full disk or a read-only folder is the machine's, not a bug
            if fault is not None and not (_capture is not None and _capture.verbose):
                _fail(fault)
            if _capture is not None and _capture.verbose:
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (--verbose shows the traceback)", status=1)
        finally:
            _finish()

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


@app.command()
@handle_errors
def quantize(config: ConfigArg, output: OutputOpt = None, no_cache: NoCacheOpt = False) -> None:
    """Quantize once with the config's choices and write the INT8 model and calibration tables."""
    from autoquant.engine import int8_kernels, write_outputs
    from autoquant.search import _pipeline as pipeline

    cfg = load(config, output)
    graph = pipeline.load_graph(cfg)
    end_stage()
    with progress_bar("FP32 statistics pass", pipeline.expected_samples(cfg, graph)) as advance:
        calibrated = pipeline.calibrate(cfg, progress=advance, use_cache=not no_cache, graph=graph)
    end_stage()
    result = pipeline.quantize(calibrated, cfg.quantization)
    written = write_outputs(result, cfg, cfg.output.directory)
    kernels = int8_kernels(result.model)
    end_stage()
    table = Table(title="autoquant quantize", show_header=False)
    q = cfg.quantization
    table.add_row("model", str(cfg.model.path))
    table.add_row("method", f"{q.method} ({q.bins} bins{', ratio search' if q.ratio_search else ''})")
    table.add_row("weights", "per-channel" if q.per_channel else "per-tensor")
    table.add_row("activations", q.activation_scheme)
    table.add_row(
        "reduce_range", f"{str(result.reduce_range).lower()} ({q.reduce_range}; 7-bit weights when true)"
    )
    table.add_row("CPU", f"{result.cpu_isa} (from {target_isa().source})")
    table.add_row("calibration samples", str(calibrated.stats.samples))
    table.add_row("quantized tensors", str(len(result.ranges)))
    table.add_row("FP32 nodes", ", ".join(result.fp32_nodes) or "none")
    table.add_row("INT8 kernels", ", ".join(f"{k} x{v}" for k, v in sorted(kernels.items()) if _is_int8(k)))
    table.add_row("output", str(written.model.parent))
    out.print(table)


@app.command()
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
    from autoquant.hardware import host_isa
    from autoquant.names import MODEL_FILE
    from autoquant.search import _pipeline as pipeline

    cfg = load(config, output, writes=False)
    int8_path = int8 or cfg.output.directory / MODEL_FILE
    if not int8_path.is_file():
        _fail(f"{int8_path}: no INT8 model; run `autoquant quantize {config}` first or pass --int8")
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
    budget = cfg.search.accept_int8_decay
    table = Table(
        title=f"autoquant evaluate ({evaluator.objective_label}, {result.samples} samples)", show_header=False
    )
    table.add_row("FP32 score", f"{result.fp32_score:.4f}")
    table.add_row("INT8 score", f"{result.score:.4f}")
    ci = f" (95 % CI {result.decay_ci[0]:+.4f} .. {result.decay_ci[1]:+.4f})" if result.decay_ci else ""
    verdict = "within" if result.decay <= budget else "over"
    table.add_row(f"decay ({cfg.search.decay})", f"{result.decay:+.4f}{ci}, {verdict} budget {budget}")
    for label, t in latency.items():
        threads = "1 thread" if label == "1" else "default threads"
        table.add_row(
            f"latency, batch 1, {threads}",
            f"FP32 {t.fp32_ms:.3f} ms, INT8 {t.int8_ms:.3f} ms ({t.speedup:.2f}x)",
        )
    table.add_row("CPU", host_isa().label)
    table.add_row("INT8 model", str(int8_path))
    out.print(table)


@app.command()
@handle_errors
def analyze(config: ConfigArg, output: OutputOpt = None) -> None:
    """Rank layers by how much quantizing each alone hurts; write sensitivity.json/.csv and report.html."""
    from autoquant.engine import write_files
    from autoquant.names import REPORT_FILE, SENSITIVITY_CSV_FILE, SENSITIVITY_FILE
    from autoquant.search import _pipeline as pipeline
    from autoquant.search import render_report, sensitivity_csv

    cfg = load(config, output)
    graph = pipeline.load_graph(cfg)
    end_stage()
    with progress_bar("FP32 statistics pass", pipeline.expected_samples(cfg, graph)) as advance:
        calibrated = pipeline.calibrate(cfg, progress=advance, graph=graph)
    end_stage()
    with progress_bar("per-layer analysis", len(graph.nodes)) as advance:
        sensitivity = pipeline.analyze_layers(cfg, calibrated, advance)
    end_stage()
    q = cfg.quantization
    details = {
        "model": str(cfg.model.path),
        "quantization": f"{q.method}, {q.bins} bins, {'per-channel' if q.per_channel else 'per-tensor'} weights, "
        f"{q.activation_scheme} activations",
        "samples": str(sensitivity.samples),
        "nodes": str(len(sensitivity.layers)),
    }
    html = render_report(sensitivity, f"autoquant sensitivity: {cfg.model.path.name}", details)
    paths = write_files(
        cfg.output.directory,
        {
            SENSITIVITY_FILE: sensitivity.to_json().encode(),
            SENSITIVITY_CSV_FILE: sensitivity_csv(sensitivity).encode(),
            REPORT_FILE: html.encode(),
        },
    )
    table = Table(title=f"most sensitive layers ({sensitivity.samples} samples)")
    for column in ("rank", "node", "op", "SNR dB", "cosine", "L2"):
        table.add_column(column)
    for rank, layer in enumerate(sensitivity.layers[:10], 1):
        d = layer.isolated
        table.add_row(
            str(rank), layer.node, layer.op_type, f"{d.snr_db:.2f}", f"{d.cosine:.5f}", f"{d.l2:.4g}"
        )
    out.print(table)
    out.print(f"report: {paths[2]}")


StudyRunner = Callable[[StudyConfig, Any, threading.Event], Any]


def _run_study(
    config: Path,
    output: Path | None,
    fresh: bool,
    command: str,
    threads: int | None,
    runner: StudyRunner | None = None,
) -> None:
    """``tune``, ``worker`` and ``serve``: run the study with the live display (``runner(config,
    reporter, stop)`` runs it; default :func:`autoquant.search.tune`); Ctrl-C stops after the trial."""
    from autoquant.cli._display import LiveReporter, best_latency_line, summary_table
    from autoquant.engine.graph import set_session_threads
    from autoquant.search import _study as tuning

    set_session_threads(threads)

    class StageReporter(LiveReporter):
        """Writes the warnings held during a phase or trial before its line; knows whether a
        trial has started (before that, Ctrl-C has nothing to wait for)."""

        trials_started = False

        def phase(self, message: str) -> None:
            end_stage()
            super().phase(message)

        def trial_started(self, *args: Any) -> None:
            self.trials_started = True
            super().trial_started(*args)

        def trial_finished(self, *args: Any) -> None:
            end_stage()
            super().trial_finished(*args)

    cfg = load(config, output)
    samples = 0 if command == "serve" else cfg.test.test_iterations or 0  # a client's samples are not seen
    reporter = StageReporter(console, cfg.search.accept_int8_decay, samples)
    stop = threading.Event()
    if runner is None:

        def runner(cfg: StudyConfig, reporter: Any, stop: threading.Event) -> Any:
            return tuning.tune(cfg, reporter=reporter, fresh=fresh, stop=stop.is_set, command=command)

    def on_ctrl_c(signum: int, frame: object) -> None:
        if not reporter.trials_started:  # calibration or the FP32 reference: stop at once
            raise KeyboardInterrupt
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once
        console.print("stopping after the current trial (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        with reporter:
            result = runner(cfg, reporter, stop)
    except KeyboardInterrupt:
        if not reporter.trials_started:
            raise  # handle_errors: "interrupted", exit status 130
        stop.set()
        result = None
    finally:
        signal.signal(signal.SIGINT, previous)
    if stop.is_set():
        if result is not None:
            out.print(summary_table(result))
        _fail(f"interrupted; the best model so far is in {cfg.output.directory}", status=130)
    out.print(summary_table(result))
    best = result.best
    if best is None:
        _fail("no trial completed")
    verdict = "within" if best.within_budget else "OVER"
    out.print(
        f"best: trial {best.number} ({best.key}), decay {best.decay:+.4f} {verdict} the budget "
        f"{result.budget}; FP32 nodes: {', '.join(best.fp32_nodes) or 'none'}"
    )
    out.print(best_latency_line(result))
    cpu = describe(best.params.get("reduce_range", cfg.quantization.reduce_range))
    out.print(
        f"CPU: {cpu['cpu_isa']}; reduce_range {cpu['reduce_range']}: {str(cpu['reduce_range_resolved']).lower()}"
    )
    out.print(f"outputs: {result.output}")


@app.command()
@handle_errors
def tune(
    config: ConfigArg, output: OutputOpt = None, fresh: FreshOpt = False, threads: ThreadsOpt = None
) -> None:
    """Search for the best INT8 model within the budget (resumes the stored study, or joins it
    with the workers of a shared storage)."""
    _run_study(config, output, fresh, "tune", threads)


@app.command()
@handle_errors
def worker(config: ConfigArg, output: OutputOpt = None, threads: ThreadsOpt = None) -> None:
    """Join the study at the config's shared storage (PostgreSQL, a journal file) and run its trials
    until it is done; start one on each machine."""
    _run_study(config, output, False, "worker", threads)


@app.command()
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

    def run(cfg: StudyConfig, reporter: Any, stop: threading.Event) -> Any:
        desk = Desk(cfg, trial_timeout, stop)
        with HttpServer(make_app(desk, token, int(max_body_mb * 2**20)), host, port) as server:
            guard = "token required" if token else "no token: this machine only"
            console.print(f"serving the study at {server.url} ({guard}); API: {server.url}/openapi.json")
            try:
                return serve_study(cfg, desk, reporter, trials, fresh=fresh)
            finally:
                if not stop.is_set():
                    time.sleep(linger)  # clients that ask now are told the study is finished

    _run_study(config, output, fresh, "serve", threads, run)


@app.command()
@handle_errors
def status(config: ConfigArg, output: OutputOpt = None) -> None:
    """Show a stored study's trials, its best so far and the processes serving it, without running anything."""
    import time

    from autoquant.cli._display import summary_table
    from autoquant.search import _study as tuning

    result, seen = tuning.stored_status(load(config, output, writes=False))
    out.print(summary_table(result))
    out.print(f"{len(result.trials)} completed and {result.failed} failed trials in {result.storage}")
    now = time.time()
    recent = [w for w in seen if now - float(w.get("seen", 0.0)) < RECENT_S]
    if recent:
        table = Table(title="processes serving the study (seen in the last 10 minutes, most recent first)")
        for column in ("host", "pid", "command", "last heartbeat", "current trial", "state"):
            table.add_column(column)
        for w in recent:
            trial = f"#{w['trial']} {w.get('key') or ''}".strip() if w.get("trial") is not None else "-"
            ago = max(0.0, now - float(w.get("seen", now)))
            table.add_row(
                str(w.get("host")),
                str(w.get("pid")),
                str(w.get("command")),
                f"{ago:.0f} s ago",
                trial,
                str(w.get("state")),
            )
        out.print(table)
    if len(seen) > len(recent):
        out.print(f"{len(seen) - len(recent)} processes served the study earlier")


#: How long ago a process may have been seen for ``status`` to list it.
RECENT_S = 600.0


def _is_int8(op_type: str) -> bool:
    return op_type.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize"))


@app.command()
@handle_errors
def templates() -> None:
    """Print the named image preprocessing templates and their strings."""
    from autoquant.data import TEMPLATES

    for name, spec in TEMPLATES.items():
        typer.echo(f"{name}: {spec}")


@app.command()
@handle_errors
def check(config: ConfigArg, output: OutputOpt = None) -> None:
    """Validate the config, the model and every sample of the data, and print the plan; writes nothing."""
    from autoquant.search import _pipeline as pipeline

    cfg = load(config, output, writes=False)
    counts = pipeline.check_data(cfg, pipeline.input_specs(cfg), every_sample=True)
    graph = pipeline.load_graph(cfg, persist=False)
    table = Table(title=f"plan for {config}", show_header=False)
    table.add_row("model", f"{cfg.model.path} (opset {graph.opset}, {len(graph.nodes)} quantizable nodes)")
    table.add_row("inputs", ", ".join(f"{s.name} {list(s.shape)}" for s in graph.inputs))
    table.add_row("first layer", graph.first_layer or "none")
    table.add_row(
        "calibration", f"{counts['calibration']} samples from {cfg.calibration.source}, each checked"
    )
    if "test" in counts:
        table.add_row("test", f"{counts['test']} samples from {cfg.test.source}, each checked")
    cpu = describe(cfg.quantization.reduce_range)
    table.add_row(
        "CPU",
        f"{cpu['cpu_isa']} (from {cpu['cpu_isa_source']}); reduce_range {cpu['reduce_range']}: "
        f"{str(cpu['reduce_range_resolved']).lower()}",
    )
    table.add_row("search", f"{cfg.search.mode} mode, accept_int8_decay={cfg.search.accept_int8_decay}")
    table.add_row("output", str(cfg.output.directory))
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
