"""Per-node profiles of the corpus models: where INT8 kernels pay and where Q/DQ pairs only add cost.

For each model of bench/corpus.py (and the digits example) the script calibrates once, then
quantizes with the corpus choices (KL thresholds, per-channel weights) for each
``quantization.float_ops`` (none, activations, elementwise) and:

* profiles the FP32 and each INT8 model at one thread with onnxruntime's profiler
  (``SessionOptions.enable_profiling``; the profile and the optimized graph go to a temporary
  folder, see autoquant/profiling.py) and groups the kernel time: compute kernels, Q/DQ,
  INT8 element-wise kernels (QLinearAdd, QLinearMul, ...), float element-wise ops, fused float
  activations (Gelu, QuickGelu), layout changes (Transpose, Reorder*), the rest;
* counts what onnxruntime's graph optimizations made of the QDQ model (QLinearConv, Q/DQ left,
  Transposes of its NHWC layout, ...);
* times each INT8 model against the FP32 model, in turn, at one thread and at the default
  thread count (autoquant.evaluation.compare_latency: the way ``autoquant tune`` times trials).

Writes (replaces) its section of bench/RESULTS.md and prints it.

Run:   python bench/profile.py [--models ocr_det,nudenet,...] [--runs 30]
Takes: about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from calibration import machine_line, write_section  # bench/ is on sys.path when run as a script
from corpus import MODELS, model_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoquant.config import parse_config  # noqa: E402
from autoquant.evaluation import compare_latency  # noqa: E402
from autoquant.evaluation._profiling import Profile, profile_model  # noqa: E402
from autoquant.hardware import host_isa  # noqa: E402
from autoquant.search import pipeline  # noqa: E402

GROUPS = {
    "compute INT8": {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger"},
    "compute FP32": {"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"},
    "Q/DQ": {"QuantizeLinear", "DequantizeLinear"},
    "element-wise INT8": {
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
    },
    "element-wise float": {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Sigmoid",
        "HardSigmoid",
        "Erf",
        "Tanh",
        "Clip",
        "Relu",
        "Pow",
        "Sqrt",
        "Softmax",
        "GlobalAveragePool",
        "Concat",
    },
    "fused float activation": {"Gelu", "QuickGelu", "FastGelu", "BiasGelu"},
    "layout": {"Transpose", "ReorderInput", "ReorderOutput"},
}
VARIANTS = ("none", "activations", "elementwise")


def config_for(name: str, folder: Path):
    """The corpus config of bench/corpus.py, as a StudyConfig."""
    _, _, data, _, objective, _ = MODELS[name]
    calib, test = data(folder / "data")
    config = {
        "model": model_section(name),
        "calibration": {"source": str(calib), "batch_size": 1},
        "test": {"source": str(test), "batch_size": 1, "objective": objective},
        "quantization": {"per_channel": True},
        "tracking": {"enabled": False},
        "output": {"directory": str(folder / "out")},
    }
    return parse_config(yaml.safe_dump(config), folder / "config.yaml")


def groups(profile: Profile) -> dict[str, float]:
    """Kernel ms per group of :data:`GROUPS` (and ``other``)."""
    found = dict.fromkeys([*GROUPS, "other"], 0.0)
    for op, ms in profile.by_op_type().items():
        group = next((g for g, ops in GROUPS.items() if op in ops), "other")
        found[group] += ms
    return found


def fusions(profile: Profile) -> str:
    ops = profile.optimized_ops
    keys = (
        "QLinearConv",
        "Conv",
        "FusedConv",
        "QLinearMatMul",
        "MatMul",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearAdd",
        "QLinearMul",
        "Gelu",
        "QuickGelu",
        "Transpose",
    )
    return ", ".join(f"{k} {ops[k]}" for k in keys if ops.get(k))


def top(profile: Profile, count: int = 6) -> str:
    return ", ".join(f"{op} {ms:.2f}" for op, ms in list(profile.by_op_type().items())[:count])


def run(name: str, runs: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix=f"aq-profile-{name}-") as tmp:
        folder = Path(tmp)
        config = config_for(name, folder)
        calibrated = pipeline.calibrate(config)
        graph = calibrated.graph
        feed = pipeline.sample_feeds(config, graph, 1)[0]
        fp32 = profile_model(graph.prepared_path, feed, threads=1, runs=runs, workdir=folder)
        chains = {c.kind for c in graph.activation_chains}
        lines = [
            f"| {name} | FP32 | | {fp32.total_ms:.2f} | "
            + " | ".join(f"{v:.2f}" for v in groups(fp32).values())
            + f" | {top(fp32)} | {fusions(fp32)} |"
        ]
        for variant in VARIANTS:
            if variant == "activations" and not chains:
                continue
            choices = config.quantization.model_copy(update={"float_ops": variant})
            int8 = pipeline.quantize(calibrated, choices).model
            profile = profile_model(int8, feed, threads=1, runs=runs, workdir=folder)
            latency = compare_latency(graph.prepared_path, int8, feed)
            speed = "; ".join(
                f"{'1 thread' if k == '1' else 'default'}: {t.fp32_ms:.2f} / {t.int8_ms:.2f} ms ({t.speedup:.2f}x)"
                for k, t in latency.items()
            )
            lines.append(
                f"| {name} | INT8, float_ops: {variant} | {speed} | {profile.total_ms:.2f} | "
                + " | ".join(f"{v:.2f}" for v in groups(profile).values())
                + f" | {top(profile)} | {fusions(profile)} |"
            )
            print(lines[-1], flush=True)
        return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--runs", type=int, default=30, help="profiled runs per model")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        rows += run(name, args.runs)
    header = " | ".join(GROUPS)
    text = "\n".join(
        [
            "## Per-node profiles: where INT8 pays and where Q/DQ only adds cost",
            "",
            f"`python bench/profile.py --runs {args.runs}`; CPU instruction set: {host_isa().label}. "
            f"{machine_line()}",
            "",
            "Quantization: KL thresholds, per-channel weights, each `float_ops`. Latency: batch 1, the INT8 "
            "model timed in turn with the FP32 model (speedup = FP32 ms / INT8 ms). Profile: onnxruntime's "
            "profiler at 1 thread, median kernel ms per run by group (the profiler slows small kernels; "
            "compare rows with each other). Optimized graph: op counts after onnxruntime's graph "
            "optimizations.",
            "",
            f"| model | variant | latency FP32 / INT8 | profiled ms | {header} | other | slowest op types (ms) | "
            "optimized graph |",
            "|---|---|---|---:|" + "---:|" * (len(GROUPS) + 1) + "---|---|",
            *rows,
        ]
    )
    write_section("profile", text)
    print(text)


if __name__ == "__main__":
    main()
