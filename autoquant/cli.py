"""Command-line interface: a thin layer over :mod:`autoquant.pipeline`.

Every command takes the study config path and ``--output DIR``. Bad input ends with one line per
problem on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from autoquant import __version__
from autoquant.config import StudyConfig, load_config
from autoquant.errors import AutoquantError

app = typer.Typer(
    name="autoquant",
    help="Find the best INT8 post-training quantization of an ONNX model within an accuracy budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

ConfigArg = Annotated[Path, typer.Argument(help="The study config (YAML).", show_default=False)]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Output folder; overrides the config's output.directory.")
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs and CI: plain lines that are never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("onnxruntime", "alembic", "optuna", "mlflow", "root"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _fail(message: str, status: int = 2) -> None:
    for line in message.splitlines() or [message]:
        typer.echo(f"autoquant: error: {line}", err=True)
    raise typer.Exit(status)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn autoquant errors into one line each and exit status 2; Ctrl-C into status 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AutoquantError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", status=130)

    return wrapper


def load(config_path: Path, output: Path | None) -> StudyConfig:
    """Load a config and apply ``--output``."""
    config = load_config(config_path)
    if output is not None:
        config = config.replace(output={"directory": output.resolve()})
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
def quantize(
    config: ConfigArg,
    output: OutputOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore the statistics cache.")] = False,
) -> None:
    """Quantize once with the config's choices and write the INT8 model and calibration tables."""
    from autoquant import pipeline
    from autoquant.outputs import int8_kernels, write_outputs

    cfg = load(config, output)
    graph = pipeline.load_graph(cfg)
    with progress_bar("FP32 statistics pass", pipeline.expected_samples(cfg, graph)) as advance:
        calibrated = pipeline.calibrate(cfg, progress=advance, use_cache=not no_cache)
    if calibrated.stats.from_cache:
        typer.echo("statistics: reused from the cache, FP32 pass skipped", err=True)
    result = pipeline.quantize(calibrated, cfg.quantization)
    written = write_outputs(result, cfg, cfg.output.directory)
    kernels = int8_kernels(result.model)
    table = Table(title="autoquant quantize", show_header=False)
    q = cfg.quantization
    table.add_row("model", str(cfg.model.path))
    table.add_row("method", f"{q.method} ({q.bins} bins{', ratio search' if q.ratio_search else ''})")
    table.add_row("weights", "per-channel" if q.per_channel else "per-tensor")
    table.add_row("activations", q.activation_scheme)
    table.add_row("calibration samples", str(calibrated.stats.samples))
    table.add_row("quantized tensors", str(len(result.ranges)))
    table.add_row("FP32 nodes", ", ".join(result.fp32_nodes) or "none")
    table.add_row("INT8 kernels", ", ".join(f"{k} x{v}" for k, v in sorted(kernels.items()) if _is_int8(k)))
    table.add_row("output", str(written.model.parent))
    out.print(table)


def _is_int8(op_type: str) -> bool:
    return op_type.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize"))


@app.command()
@handle_errors
def templates() -> None:
    """Print the named image preprocessing templates and their strings."""
    from autoquant.preprocess import TEMPLATES

    for name, spec in TEMPLATES.items():
        typer.echo(f"{name}: {spec}")


@app.command()
@handle_errors
def check(config: ConfigArg, output: OutputOpt = None) -> None:
    """Validate a config, the model and the data, and print the plan without running it."""
    from autoquant import pipeline
    from autoquant.data import open_reader

    cfg = load(config, output)
    graph = pipeline.load_graph(cfg)
    calib = open_reader(cfg.calibration, list(graph.inputs), limit=cfg.calibration.calib_iterations)
    table = Table(title=f"plan for {config}", show_header=False)
    table.add_row("model", f"{cfg.model.path} (opset {graph.opset}, {len(graph.nodes)} quantizable nodes)")
    table.add_row("inputs", ", ".join(f"{s.name} {list(s.shape)}" for s in graph.inputs))
    table.add_row("first layer", graph.first_layer or "none")
    table.add_row("calibration", f"{len(calib)} samples from {cfg.calibration.source}")
    if cfg.test.source:
        test = open_reader(cfg.test, list(graph.inputs), limit=cfg.test.test_iterations)
        table.add_row("test", f"{len(test)} samples from {cfg.test.source}")
    table.add_row("search", f"{cfg.search.mode} mode, accept_int8_decay={cfg.search.accept_int8_decay}")
    table.add_row("output", str(cfg.output.directory))
    out.print(table)


def main() -> None:
    """Entry point of the ``autoquant`` console script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - raised outside a command
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
