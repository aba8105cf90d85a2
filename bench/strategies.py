"""Fast-mode strategies: which known-good strategy is within budget, and how fast, on each model.

For the digits example and each model of tests/corpus.py (the real-model corpus of Milestone 6,
data from its helpers' defaults), the script calibrates once through autoquant's Python API, then
for every candidate strategy builds the quantization config as fast mode would
(``SearchSpace.complete`` then ``apply`` on the config's quantization section: autoquant's
defaults for the corpus models, configs/digits.yaml's for digits), quantizes, scores the whole
test set against FP32 (no pruning) and times the INT8 model against the FP32 model at batch 1 and
one thread, in turn in this process (``LatencyTimer.model_ratio``). A strategy is within budget
when its decay is at most the model's budget in bench/corpus.py (digits: its config's 0.005) and,
separately, at most 0.005 (the Milestone 9 target). Candidates: the six strategies fast.yaml had
before this benchmark re-chose them, and a few more over parameters of the full space (float_ops,
per-channel with MSE); search_spaces/fast.yaml records what won. Prints one line per (model, strategy); writes its section of bench/RESULTS.md.

Run:   python bench/strategies.py [--models digits,ocr_cls,...] [--candidates default,mse,...]
Takes: about 10 to 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import yaml
from calibration import machine_line, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus import MODELS, model_section  # noqa: E402

from autoquant.config import load_config  # noqa: E402
from autoquant.evaluation import LatencyTimer  # noqa: E402
from autoquant.hardware import host_isa  # noqa: E402
from autoquant.search import load_space  # noqa: E402
from autoquant.search.pipeline import calibrate, evaluator, quantize, sample_feeds  # noqa: E402

TARGET = 0.005

#: The candidates: the six strategies of search_spaces/fast.yaml before this benchmark chose them
#: (its order then), and more over parameters of the full space (float_ops, per-channel MSE).
CANDIDATES = [
    {"name": "default"},
    {"name": "per_channel", "per_channel": True},
    {"name": "mse", "method": "mse"},
    {"name": "depthwise_per_channel", "method": "mse", "depthwise_per_channel": True},
    {"name": "first_layer_fp32", "method": "mse", "per_channel": True, "first_layer_fp32": True},
    {"name": "percentile", "method": "percentile", "max_percentile": 0.99999, "per_channel": True},
    {"name": "per_channel_mse", "method": "mse", "per_channel": True},
    {"name": "activations", "float_ops": "activations"},
    {"name": "per_channel_mse_activations", "method": "mse", "per_channel": True, "float_ops": "activations"},
    {
        "name": "percentile_activations",
        "method": "percentile",
        "max_percentile": 0.99999,
        "per_channel": True,
        "float_ops": "activations",
    },
    {"name": "per_channel_mse_elementwise", "method": "mse", "per_channel": True, "float_ops": "elementwise"},
]


def config_for(name: str, folder: Path) -> tuple[Path, float]:
    """A study config for ``name`` in ``folder`` (tracking off, cache and output there), and its budget."""
    if name == "digits":
        data = yaml.safe_load((ROOT / "configs/digits.yaml").read_text())
        for section, key in (
            ("model", "path"),
            ("calibration", "source"),
            ("test", "source"),
            ("test", "labels"),
        ):
            data[section][key] = str((ROOT / "configs" / data[section][key]).resolve())
        budget = float(data["search"]["accept_int8_decay"])
    else:
        _, _, make_data, _, objective, budget = MODELS[name]
        calib, test = make_data(folder / "data")
        data = {
            "model": model_section(name),
            "calibration": {"source": str(calib), "batch_size": 1, "calib_iterations": 0},
            "test": {"source": str(test), "batch_size": 1, "test_iterations": 0, "objective": objective},
            "search": {"mode": "fast", "accept_int8_decay": budget},
        }
    data["calibration"]["cache_dir"] = str(folder / "cache")
    data["tracking"] = {"enabled": False}
    data["output"] = {"directory": str(folder / "out")}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, budget


def run_model(name: str, candidates: list[dict]) -> tuple[float, list[dict]]:
    """FP32 score and one row per candidate for model ``name``."""
    with tempfile.TemporaryDirectory(prefix=f"aq-strategies-{name}-") as tmp:
        path, budget = config_for(name, Path(tmp))
        config = load_config(path)
        calibrated = calibrate(config)
        scorer = evaluator(config, calibrated.graph)
        fp32_score = scorer.fp32_objective() and scorer.fp32_score
        feed = sample_feeds(config, calibrated.graph, 1)[0]
        timer = LatencyTimer(config.model.path, feed, budget_s=0.5, threads=1)
        space = load_space("fast")
        rows = []
        for strategy in candidates:
            partial = {k: v for k, v in strategy.items() if k != "name"}
            quantization = space.apply(space.complete(partial, config.quantization), config.quantization)
            result = quantize(calibrated, quantization)
            data = result.model.SerializeToString()
            found = scorer.evaluate(data)
            speedup = 1.0 / timer.model_ratio(data)
            row = {
                "model": name,
                "strategy": strategy["name"],
                "decay": found.decay,
                "budget": budget,
                "within": found.decay <= budget,
                "target": found.decay <= TARGET,
                "speedup": speedup,
                "fp32_ms": timer.fp32_ms,
            }
            rows.append(row)
            print(
                f"{name} {row['strategy']}: score {found.score:.4f} decay {found.decay:+.4f} "
                f"(budget {budget:g}: {'yes' if row['within'] else 'no'}; {TARGET:g}: "
                f"{'yes' if row['target'] else 'no'}), 1-thread speedup {speedup:.2f}x",
                flush=True,
            )
        return float(fp32_score), rows


def main() -> None:
    known = {s["name"]: s for s in CANDIDATES}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(["digits", *MODELS]), help="comma-separated subset")
    parser.add_argument("--candidates", default=",".join(known), help="comma-separated strategy names")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    candidates = [known[n] for n in args.candidates.split(",")]
    models = args.models.split(",")
    table: dict[str, dict[str, dict]] = {}
    fp32: dict[str, tuple[float, float, float]] = {}
    for name in models:
        score, rows = run_model(name, candidates)
        table[name] = {r["strategy"]: r for r in rows}
        fp32[name] = (score, rows[0]["budget"], rows[0]["fp32_ms"])

    def cell(r: dict) -> str:
        mark = "**" if r["within"] else ""
        return f"{mark}{r['decay']:+.4f}{mark}{' ✓' if r['target'] else ''}, {r['speedup']:.2f}x"

    def label(s: dict) -> str:
        return f"`{s['name']}`: " + (
            ", ".join(f"{k}={v}" for k, v in s.items() if k != "name") or "config's choices"
        )

    isa = host_isa().label
    lines = [
        "## Fast-mode strategies: decay and 1-thread speedup of each candidate on each model",
        "",
        f"`python bench/strategies.py --models {args.models} --candidates {args.candidates}`; CPU instruction "
        f"set: **{isa}**. {machine_line()}",
        "",
        "Each cell: decay against FP32 on the whole test set, **bold** when within the model's budget "
        f"(bench/corpus.py's; digits: configs/digits.yaml's), ✓ when also within {TARGET:g}; then the "
        "speedup FP32 ms / INT8 ms at batch 1 and one thread, timed in turn with the FP32 model "
        "(median over 3 sessions). Strategies complete from the config's quantization section: autoquant's "
        "defaults (per-tensor, KL, asymmetric) for the corpus models, configs/digits.yaml for digits.",
        "",
        "| strategy | "
        + " | ".join(f"{m} ({fp32[m][1]:g}; FP32 {fp32[m][0]:.4f}, {fp32[m][2]:.2f} ms)" for m in models)
        + " | within budget | within 0.005 |",
        "|---|" + "---|" * (len(models) + 2),
    ]
    for s in candidates:
        rows = [table[m][s["name"]] for m in models]
        lines.append(
            f"| {label(s)} | "
            + " | ".join(cell(r) for r in rows)
            + f" | {sum(r['within'] for r in rows)}/{len(rows)} | {sum(r['target'] for r in rows)}/{len(rows)} |"
        )
    text = "\n".join(lines)
    write_section("strategies", text)
    print(text)


if __name__ == "__main__":
    main()
