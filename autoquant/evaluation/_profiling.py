"""Per-node profiles from onnxruntime's profiler: where a model's time goes, kernel by kernel, and
which kernels onnxruntime's graph optimizations actually made (its optimized graph).

The profiler's JSON and the optimized model are written into a temporary folder (under
``workdir`` when given, e.g. the cache folder), read, and deleted; nothing lands in the current
directory. Times are kernel times per run with the profiler on, which slows small kernels; compare
profiles with each other, not with untimed latencies.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from autoquant.engine.graph import session_for, session_options
from autoquant.errors import EvaluationError, one_line


@dataclass(frozen=True)
class NodeTime:
    """One node of onnxruntime's optimized graph and its median kernel time per run."""

    node: str
    op_type: str
    ms: float


@dataclass(frozen=True)
class Profile:
    """A model's per-node profile at one thread count.

    Attributes:
        threads: onnxruntime's ``intra_op_num_threads`` (0: its default).
        runs: Runs profiled (after the warm-up runs).
        nodes: Every profiled node, slowest first.
        optimized_ops: Op type -> count in onnxruntime's optimized graph (QLinearConv, Gelu, ...).
    """

    threads: int
    runs: int
    nodes: tuple[NodeTime, ...]
    optimized_ops: dict[str, int] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        """Sum of the kernel times of one run."""
        return float(sum(n.ms for n in self.nodes))

    def by_op_type(self) -> dict[str, float]:
        """Op type -> kernel time per run (ms), slowest first."""
        totals: Counter[str] = Counter()
        for n in self.nodes:
            totals[n.op_type] += n.ms
        return dict(totals.most_common())

    def share(self, op_types: set[str] | frozenset[str]) -> float:
        """The fraction of the kernel time spent in ``op_types``."""
        total = self.total_ms
        return sum(n.ms for n in self.nodes if n.op_type in op_types) / total if total else 0.0


def _node_times(events: list[dict], warmup: int) -> tuple[dict[tuple[str, str], float], int]:
    """Per (node, op type): the median kernel time of a run in microseconds, over the runs after
    the first ``warmup`` (a median, so that a run the machine interrupted does not count); and
    the number of runs counted."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) <= warmup:
        return {}, 0
    counted = starts[warmup:]
    durations: dict[tuple[str, str], list[float]] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e["ts"] < counted[0]:
            continue
        key = (name.removesuffix("_kernel_time"), str(e.get("args", {}).get("op_name", "")))
        durations.setdefault(key, []).append(float(e["dur"]))
    runs = len(counted)
    # a node that runs k times a run (inside a loop) has k events per run: median x k
    return {k: float(np.median(v)) * len(v) / runs for k, v in durations.items()}, runs


def profile_model(
    model: onnx.ModelProto | bytes | Path,
    feed: Mapping[str, np.ndarray],
    threads: int = 1,
    runs: int = 20,
    warmup: int = 5,
    workdir: Path | None = None,
) -> Profile:
    """Profile ``model`` over ``runs`` runs on ``feed`` (batch 1) after ``warmup`` runs.

    Args:
        model: The model, its bytes or its file.
        feed: One input.
        threads: onnxruntime's ``intra_op_num_threads`` (0: its default).
        runs: Runs to profile.
        warmup: Runs before, left out of the profile.
        workdir: Folder for the temporary files (default: the system's temporary folder).

    Raises:
        EvaluationError: onnxruntime cannot load or run the model.
    """
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autoquant-profile-", dir=workdir) as tmp:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            session = session_for(model, options)
            for _ in range(warmup + runs):
                session.run(None, dict(feed))
            profile_path = Path(session.end_profiling())
        except Exception as exc:
            raise EvaluationError(f"onnxruntime cannot profile the model ({one_line(exc)})") from exc
        events = json.loads(profile_path.read_text(encoding="utf-8"))
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    times, counted = _node_times(events, warmup)
    nodes = sorted(
        (NodeTime(node, op, us / 1000.0) for (node, op), us in times.items()),
        key=lambda n: -n.ms,
    )
    ops = Counter(n.op_type for n in optimized.graph.node)
    return Profile(threads, counted, tuple(nodes), dict(ops.most_common()))
