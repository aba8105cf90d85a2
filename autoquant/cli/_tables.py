"""The tables that ``quantize``, ``evaluate``, ``analyze``, ``check`` and ``status`` print.

Each function takes what its command computed and returns a :class:`rich.table.Table`; nothing
here runs a model or reads a file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from autoquant.cli._display import threads_text
from autoquant.config import StudyConfig
from autoquant.hardware import describe, host_isa, target_isa
from autoquant.search import meets_budget

if TYPE_CHECKING:  # the commands import these on first use, to start fast
    from autoquant.engine import QuantizedModel, Sensitivity
    from autoquant.engine.graph import ModelGraph
    from autoquant.evaluation import Evaluation

#: How long ago a process may have been seen for ``status`` to list it.
RECENT_S = 600.0
#: How many node names a line shows before "+N more".
SHOWN_NODES = 5


def node_list(names: Sequence[str], folder: Path) -> str:
    """The first few node names, then ``+N more (all in <folder>/fp32_nodes.txt)``; ``none`` if none."""
    from autoquant.names import FP32_NODES_FILE

    if len(names) <= SHOWN_NODES:
        return ", ".join(names) or "none"
    rest = len(names) - SHOWN_NODES
    return f"{', '.join(names[:SHOWN_NODES])} +{rest} more (all in {folder / FP32_NODES_FILE})"


def _weights(per_channel: bool) -> str:
    return "per-channel" if per_channel else "per-tensor"


def quantize_table(
    cfg: StudyConfig,
    result: QuantizedModel,
    samples: int,
    kernels: Mapping[str, int],
    output: Path,
    layers_run: tuple[Sequence[str], int] | None = None,
) -> Table:
    """What ``quantize`` did: its choices, the CPU, the FP32 nodes, the compute layers that
    onnxruntime runs in FP32 (``layers_run``: those and the model's count) and the INT8 kernels."""
    from autoquant.engine import is_integer_kernel

    table = Table(title="autoquant quantize", show_header=False)
    q = cfg.quantization
    table.add_row("model", str(cfg.model.path))
    table.add_row("method", f"{q.method} ({q.bins} bins{', ratio search' if q.ratio_search else ''})")
    table.add_row("weights", _weights(q.per_channel))
    table.add_row("activations", q.activation_scheme)
    table.add_row(
        "reduce_range", f"{str(result.reduce_range).lower()} ({q.reduce_range}; 7-bit weights when true)"
    )
    table.add_row("CPU", f"{result.cpu_isa} (from {target_isa().source})")
    table.add_row("calibration samples", str(samples))
    table.add_row("quantized tensors", str(len(result.ranges)))
    table.add_row("FP32 nodes", node_list(result.fp32_nodes, output))
    if layers_run is not None:
        in_float, compute = layers_run
        shown = ", ".join(in_float[:SHOWN_NODES]) + (
            f" +{len(in_float) - SHOWN_NODES} more" if len(in_float) > SHOWN_NODES else ""
        )
        table.add_row(
            "FP32 layers run",
            f"{len(in_float)} of {compute} compute layers onnxruntime runs in FP32 (optimised graph)"
            + (f": {shown}" if in_float else ""),
        )
    if q.bias_correction:
        on = min(cfg.calibration.bias_correction_samples, samples)
        table.add_row("bias correction", f"{len(result.bias_corrected)} layers, on {on} calibration samples")
    table.add_row(
        "INT8 kernels", ", ".join(f"{k} x{v}" for k, v in sorted(kernels.items()) if is_integer_kernel(k))
    )
    table.add_row("output", str(output))
    return table


def evaluate_table(
    cfg: StudyConfig, objective: str, result: Evaluation, latency: Mapping[str, Any], int8_path: Path
) -> Table:
    """What ``evaluate`` measured: both scores, the decay against the budget, and the latencies."""
    budget = cfg.search.accept_int8_decay
    table = Table(title=f"autoquant evaluate ({objective}, {result.samples} samples)", show_header=False)
    table.add_row("FP32 score", f"{result.fp32_score:.4f}")
    table.add_row("INT8 score", f"{result.score:.4f}")
    ci = f" (95 % CI {result.decay_ci[0]:+.4f} .. {result.decay_ci[1]:+.4f})" if result.decay_ci else ""
    bound = f", upper bound {result.decay_bound:+.4f}" if result.decay_bound is not None else ""
    verdict = "within" if meets_budget(result.decay, result.decay_bound, cfg.search) else "over"
    table.add_row(f"decay ({cfg.search.decay})", f"{result.decay:+.4f}{ci}{bound}, {verdict} budget {budget}")
    for label, t in latency.items():
        table.add_row(
            f"latency, batch 1, {threads_text(label)}",
            f"FP32 {t.fp32_ms:.3f} ms, INT8 {t.int8_ms:.3f} ms ({t.speedup:.2f}x)",
        )
    table.add_row("CPU", host_isa().label)
    table.add_row("INT8 model", str(int8_path))
    return table


def sensitivity_details(cfg: StudyConfig, sensitivity: Sensitivity) -> dict[str, str]:
    """The header of ``analyze``'s HTML report."""
    q = cfg.quantization
    return {
        "model": str(cfg.model.path),
        "quantization": f"{q.method}, {q.bins} bins, {_weights(q.per_channel)} weights, "
        f"{q.activation_scheme} activations",
        "samples": str(sensitivity.samples),
        "nodes": str(len(sensitivity.layers)),
    }


def sensitivity_table(sensitivity: Sensitivity, most: int = 10) -> Table:
    """The ``most`` layers that quantizing alone hurts most (``analyze``)."""
    table = Table(title=f"most sensitive layers ({sensitivity.samples} samples)")
    for column in ("rank", "node", "op", "SNR dB", "cosine", "L2"):
        table.add_column(column)
    for rank, layer in enumerate(sensitivity.layers[:most], 1):
        d = layer.isolated
        table.add_row(
            str(rank), layer.node, layer.op_type, f"{d.snr_db:.2f}", f"{d.cosine:.5f}", f"{d.l2:.4g}"
        )
    return table


def plan_table(config_path: Path, cfg: StudyConfig, graph: ModelGraph, counts: Mapping[str, int]) -> Table:
    """What ``check`` found: the model, its inputs, the data counts, the CPU and the search."""
    table = Table(title=f"plan for {config_path}", show_header=False)
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
    return table


def recent_processes(seen: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """The worker records seen in the last :data:`RECENT_S` seconds."""
    now = time.time() if now is None else now
    return [w for w in seen if now - float(w.get("seen", 0.0)) < RECENT_S]


def processes_table(recent: list[dict[str, Any]], now: float | None = None) -> Table:
    """The processes serving a study (``status``), most recent first."""
    now = time.time() if now is None else now
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
    return table
