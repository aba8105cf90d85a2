"""The selection rule and the Pareto front, on hand-made trials and on a digits study."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort

import autoquant
from autoquant.engine import compute_layers
from autoquant.evaluation import THREADS
from autoquant.hardware import host_isa
from autoquant.search import TrialOutcome
from autoquant.search._selection import best_outcome, pareto_front, ranked
from tests.helpers import ROOT, digits_variant


def trial(
    number: int,
    decay: float,
    latency: float,
    compute: int = 0,
    other_fp32: int = 0,
    ok: bool | None = None,
    budget: float = 0.005,
) -> TrialOutcome:
    """A completed trial: ``compute`` FP32 compute layers plus ``other_fp32`` other FP32 nodes."""
    layers = tuple(f"conv{i}" for i in range(compute))
    nodes = (*layers, *(f"norm_mul{i}" for i in range(other_fp32)))
    within = decay <= budget if ok is None else ok
    return TrialOutcome(
        number, f"t{number}", {}, 0.9, decay, None, nodes, latency, within, fp32_compute=layers
    )


def test_fewer_fp32_compute_layers_first_then_lower_latency() -> None:
    # a keeps the 18 element-wise ops of decomposed norms in FP32 but no compute layer; b is faster
    # and more accurate but keeps one Conv in FP32: a wins, whatever b's speed.
    a = trial(0, 0.004, 1.00, compute=0, other_fp32=18)
    b = trial(1, 0.001, 0.50, compute=1)
    assert best_outcome([a, b]) is a
    # Among as many FP32 compute layers, the faster wins beyond the tolerance (1.0 > 0.8 * 1.1) ...
    c = trial(2, 0.003, 0.80)
    assert [o.number for o in ranked([a, b, c], latency_tolerance=0.10)] == [2, 0, 1]
    # ... and within it (0.85 <= 0.8 * 1.1) the smaller decay breaks the tie.
    d = trial(3, 0.000, 0.85)
    assert [o.number for o in ranked([a, b, c, d], latency_tolerance=0.10)] == [3, 2, 0, 1]
    assert best_outcome([a, b, c, d]) is c  # no tolerance: plain latency
    # Over budget comes last, smallest decay first, then fewer FP32 compute layers.
    e, f = trial(4, 0.02, 0.1, compute=3), trial(5, 0.02, 0.1, compute=1)
    assert [o.number for o in ranked([e, f, a])] == [0, 5, 4]
    assert best_outcome([e, f]) is f


def test_pareto_front_of_hand_made_trials() -> None:
    trials = [
        trial(0, 0.010, 10.0, 0),  # on: nothing at most 10 ms is as accurate
        trial(1, 0.002, 12.0, 0),  # on
        trial(2, 0.002, 12.0, 1),  # off: #1 equals it but keeps one compute layer fewer
        trial(3, 0.001, 15.0, 2),  # on: more accurate than anything faster
        trial(4, 0.020, 9.0, 0),  # on: the fastest
        trial(5, 0.010, 11.0, 0),  # off: #0 as accurate, faster
        trial(6, 0.002, 12.0, 0),  # on: equal to #1 on all three, so neither dominates
        trial(7, 0.030, 9.5, 0),  # off: #4 is faster and more accurate
        trial(8, 0.0005, 20.0, 5),  # on: the most accurate
    ]
    front = pareto_front(trials)
    assert [o.number for o in front] == [4, 0, 1, 6, 3, 8]  # fastest first
    assert pareto_front([]) == [] and pareto_front(trials[:1]) == trials[:1]
    # every trial off the front is dominated by one on it
    on = {o.number for o in front}
    for off in (t for t in trials if t.number not in on):
        assert any(
            f.decay <= off.decay
            and f.latency_ms <= off.latency_ms
            and len(f.fp32_compute) <= len(off.fp32_compute)
            for f in front
        )


def test_elementwise_ops_left_in_float_are_not_fp32_layers(tmp_path: Path) -> None:
    """float_ops: elementwise on digits leaves its two residual Adds to float; the study counts no
    FP32 compute layer, reports both thread counts and the CPU, and its Pareto front is right.

    An Add between two quantized tensors looks the same in QDQ form whether it was quantized or
    not (DQ, DQ -> Add -> Q), and onnxruntime runs it as QLinearAdd either way. The space is the
    built-in fast space with its ``default`` strategy alone: the built-in first strategy sets
    float_ops itself (activations)."""
    space = tmp_path / "default_only.yaml"
    space.write_text(
        (ROOT / "search_spaces" / "fast.yaml").read_text().split("\nstrategies:\n")[0]
        + "\nstrategies:\n  - {name: default}\n"
    )
    config = digits_variant(
        tmp_path,
        quantization={"float_ops": "elementwise", "method": "mse"},
        search={"accept_int8_decay": 0.01, "space": space},
    )
    result = autoquant.tune(config)
    best = result.best
    adds = [n.name for n in autoquant.search.pipeline.calibrate(config).graph.nodes if n.op_type == "Add"]
    assert len(adds) == 2 and best.float_nodes == tuple(adds)
    assert best.fp32_nodes == () and best.fp32_compute == ()
    calibrated = autoquant.search.pipeline.calibrate(config)
    plain = autoquant.search.quantize(
        calibrated, config.quantization.model_copy(update={"float_ops": "none"})
    )
    written = onnx.load(config.output.directory / "model.int8.onnx")
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in plain.model.graph.node]
    assert _optimized_ops(config.output.directory / "model.int8.onnx", tmp_path).count("QLinearAdd") == 2

    summary = json.loads((config.output.directory / "study_summary.json").read_text())
    assert summary["best"]["fp32_compute_layers"] == [] and summary["best"]["float_nodes"] == adds
    latency = summary["latency"]
    assert latency["batch"] == 1 and latency["selection_threads"] == "1"
    assert latency["cpu_isa"] == host_isa().label and latency["cpu_vnni"] is host_isa().vnni
    assert set(latency["threads"]) == set(THREADS) == {"1", "default"}
    assert [latency["threads"][k]["intra_op_num_threads"] for k in ("1", "default")] == [1, 0]
    for label, t in latency["threads"].items():
        assert t["fp32_ms"] > 0 and t["best_int8_ms"] == best.latencies[label]
        assert t["best_speedup"] == t["fp32_ms"] / t["best_int8_ms"]
    # the front, recomputed here from the stored trials
    rows = summary["trials"]

    def dominated(r: dict) -> bool:
        mine = (r["decay"], r["latency_ms"], len(r["fp32_compute_layers"]))
        return any(
            (s["decay"], s["latency_ms"], len(s["fp32_compute_layers"])) != mine
            and s["decay"] <= r["decay"]
            and s["latency_ms"] <= r["latency_ms"]
            and len(s["fp32_compute_layers"]) <= len(r["fp32_compute_layers"])
            for s in rows
        )

    assert sorted(summary["pareto_front"]) == sorted(r["number"] for r in rows if not dominated(r))
    assert all(r["pareto"] == (r["number"] in summary["pareto_front"]) for r in rows)
    report = (config.output.directory / "report.html").read_text()
    assert "Pareto front" in report and report.count("<circle") == len(rows)
    assert compute_layers(calibrated.graph, ["/stem/Conv", *adds]) == ("/stem/Conv",)


def _optimized_ops(model: Path, tmp_path: Path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
