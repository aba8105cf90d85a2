"""Scale: peak memory and time of autoquant, NNCF and onnxruntime on generated models of growing size.

Models, generated here with ``onnx.helper`` and numpy (random weights, fixed seeds; no torch) and
cached in ``--output``/cache, reused by later runs. Every model takes ``pixel_values`` [batch, 3, 64,
64] (batch dynamic, opset 17) and returns 1000 logits:

- ViT-like encoders as exporters write them: a 16x16 patch-embedding Conv (stride 16) to 16 tokens,
  Reshape and Transpose to [batch, 16, width], a positional Add; pre-norm blocks of decomposed
  LayerNorm (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add), QKV MatMul+Add, Reshape
  [batch, 16, 3, heads, 64], Transpose and Gather into q, k, v, MatMul with k transposed, Mul by
  1/8, Softmax, MatMul, Transpose and Reshape back, output projection MatMul+Add, residual Add,
  then LayerNorm, MLP MatMul+Add (4x width), Erf GELU, MatMul+Add, residual Add; a final LayerNorm,
  ReduceMean over the tokens and a Gemm classifier. vit-20m: width 384, 12 blocks, 6 heads;
  vit-85m: 768, 12, 12; vit-300m: 1024, 24, 16, saved with external data (``model.onnx.data``) as
  exporters save big models. Few tokens: the weights, not the activations, make the size.
- ResNet-18-like CNNs: 7x7/2 stem Conv, BatchNormalization (not folded), ReLU, 3x3/2 MaxPool, four
  stages of two basic blocks (Conv 3x3, BN, ReLU, Conv 3x3, BN, a 1x1 Conv + BN shortcut where the
  shape changes, Add, ReLU), GlobalAveragePool, Flatten, Gemm; stage widths 32-256 (cnn-3m),
  64-512 (cnn-12m) and 96-768 (cnn-26m).

Weights are drawn so that activations keep sane ranges: N(0, 1/fan_in) for MatMul and Gemm weights,
He N(0, 2/fan_in) for Convs before a ReLU, LayerNorm gamma ~ 1 + N(0, 0.02^2), BN statistics near
(0, 1) with the last BN of each residual branch at gamma ~ 0.5, small biases. Data: 32 calibration
and 64 test images ~ N(0, 1) (``.npy``); autoquant's objective is ``cosine`` against the FP32
model's outputs (no labels), budget ``accept_int8_decay: 0.01``.

Contenders, each in its own fresh process through bench/compare.py's runner (bench/compare_run.py;
its working folder, HOME and TMPDIR inside ``--output``), every one from an empty cache:

- ``autoquant tune`` fast mode, and full mode with ``search.timeout`` = ``--timeout`` (600 s) and
  the mode's default trial count; MLflow tracking off (``--tracking`` turns it on);
- NNCF ``quantize`` (ONNX backend, defaults, every calibration sample);
- onnxruntime ``quant_pre_process`` then ``quantize_static`` MinMax, QDQ, per tensor.

Figures per model and contender:

- **peak RSS** of the whole process tree: psutil sums the RSS of the contender's process and all
  its descendants every 50 ms; the peak is the largest sum, or the process's own VmHWM (the
  kernel's peak, which catches a spike between two samples) when larger. Not ``ru_maxrss``: Linux
  carries a parent's peak into its child's, and it is per process, not per tree;
- **wall**: from starting the process to its exit (interpreter start and imports included);
- **time to first trial**: autoquant: the first completed trial's ``datetime_complete`` in the
  study's storage (study.db) minus the process's start as recorded here (so interpreter start and
  imports included, as in the one-shot tools' wall time); NNCF and onnxruntime make one model:
  their wall time;
- **time per trial**: autoquant: the mean of the trials' ``timings.trial`` when present, else of
  ``datetime_complete - datetime_start`` of the completed trials in study.db; one-shot tools: wall;
- **trials**; the 1-minute **load average** at each contender's start and end, printed beside
  every timing (the machine is shared); params = the float initializers' elements, MB = the files.

Writes ``results.md`` (with the text of ``--output``/notes.md below its table when that file
exists: observations written by hand), ``results.json`` and ``peak_rss.png`` (peak RSS against
model size per contender) in ``--output``, and nothing anywhere else: models and data in
``--output``/cache, the working files in ``--output``/.work (deleted at the end unless
``--keep-work``).

Run:   python bench/scale.py                                  # every model and contender
       python bench/scale.py --sizes vit-20m,vit-85m,cnn-3m,cnn-12m,cnn-26m
       python bench/scale.py --quick                          # vit-20m and cnn-3m; tune fast and NNCF
Takes: --quick 2 minutes on 2 cores; everything 52 minutes on 2 shared cores (vit-300m 14 of them;
       autoquant tune full runs to its --timeout on the ViTs, ends early on the CNNs), with 12 GB of
       memory free for vit-300m; generating the models once takes under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.dont_write_bytecode = True  # nothing written outside --output, bench/__pycache__ included
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from calibration import machine_line  # noqa: E402 (bench/calibration.py)
from compare import (  # noqa: E402 (bench/compare.py)
    CONTENDERS,
    Case,
    confine,
    contender_spec,
    prepare_case,
    run_contender,
    slug,
    vm_hwm_mb,
)
from compare_report import fmt, package_version  # noqa: E402

OPSET = 17
IMAGE, PATCH, CLASSES = 64, 16, 1000
INPUT = "pixel_values"
CALIB_SAMPLES, TEST_SAMPLES = 32, 64
BUDGET = 0.01
#: Models above this size are saved with external data.
EXTERNAL_ABOVE_MB = 1000
#: name -> (family, builder arguments); the order of the table.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit-20m": ("vit", {"width": 384, "depth": 12, "heads": 6}),
    "vit-85m": ("vit", {"width": 768, "depth": 12, "heads": 12}),
    "vit-300m": ("vit", {"width": 1024, "depth": 24, "heads": 16}),
    "cnn-3m": ("cnn", {"widths": [32, 64, 128, 256]}),
    "cnn-12m": ("cnn", {"widths": [64, 128, 256, 512]}),
    "cnn-26m": ("cnn", {"widths": [96, 192, 384, 768]}),
}
#: Contenders, named as in bench/compare.py.
SCALE_CONTENDERS = ("autoquant tune fast", "autoquant tune full", "nncf quantize", "ort minmax per-tensor")
QUICK_MODELS, QUICK_CONTENDERS = ("vit-20m", "cnn-3m"), ("autoquant tune fast", "nncf quantize")
POLL_S = 0.05


# --- the models -------------------------------------------------------------------------------------


class Builder:
    """An ONNX graph under construction: nodes named by scope as exporters name them, float32
    initializers drawn from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.names: set[str] = set()

    def _unique(self, name: str) -> str:
        base, k = name, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def normal(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> str:
        values = self.rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(std)
        values += np.float32(mean)
        return self.const(name, values)

    def op(self, op_type: str, inputs: list[str], scope: str, out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        name = self._unique(f"{scope}/{op_type}")
        output = out or f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def linear(self, x: str, fan_in: int, fan_out: int, scope: str, std: float | None = None) -> str:
        """MatMul by a [fan_in, fan_out] weight, then Add of the bias (as torch exports nn.Linear
        on 3-D input)."""
        w = self.normal(f"{scope}.weight", (fan_in, fan_out), std or fan_in**-0.5)
        b = self.normal(f"{scope}.bias", (fan_out,), 0.02)
        return self.op("Add", [self.op("MatMul", [x, w], scope), b], scope)

    def model(self, name: str) -> Any:
        """The model of the graph from ``pixel_values`` [batch, 3, 64, 64] to ``logits`` [batch, 1000]."""
        from onnx import TensorProto, helper

        image = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, IMAGE, IMAGE])
        logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])
        graph = helper.make_graph(self.nodes, name, [image], [logits], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.producer_name = "bench/scale.py"
        return model


def layer_norm(g: Builder, x: str, width: int, scope: str) -> str:
    """LayerNorm over the last axis, decomposed as exporters of opset < 17 LayerNorm write it."""
    mean = g.op("ReduceMean", [x], scope, axes=[-1], keepdims=1)
    centred = g.op("Sub", [x, mean], scope)
    square = g.op("Pow", [centred, g.const(f"{scope}.two", 2.0)], scope)
    var = g.op("ReduceMean", [square], scope, axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const(f"{scope}.eps", 1e-6)], scope)], scope)
    normed = g.op("Div", [centred, std], scope)
    scaled = g.op("Mul", [normed, g.normal(f"{scope}.weight", (width,), 0.02, mean=1.0)], scope)
    return g.op("Add", [scaled, g.normal(f"{scope}.bias", (width,), 0.02)], scope)


def gelu(g: Builder, x: str, scope: str) -> str:
    """x * 0.5 * (1 + erf(x / sqrt(2))), as torch exports nn.GELU()."""
    erf = g.op("Erf", [g.op("Div", [x, g.const(f"{scope}.sqrt2", np.sqrt(2.0))], scope)], scope)
    one = g.op("Add", [erf, g.const(f"{scope}.one", 1.0)], scope)
    return g.op("Mul", [g.op("Mul", [x, one], scope), g.const(f"{scope}.half", 0.5)], scope)


def attention(g: Builder, x: str, width: int, heads: int, tokens: int, scope: str) -> str:
    head = width // heads
    qkv = g.linear(x, width, 3 * width, f"{scope}/qkv")
    shape = g.const(f"{scope}.qkv_shape", [-1, tokens, 3, heads, head], np.int64)
    split = g.op("Transpose", [g.op("Reshape", [qkv, shape], scope)], scope, perm=[2, 0, 3, 1, 4])
    q, k, v = (
        g.op("Gather", [split, g.const(f"{scope}.{n}", i, np.int64)], scope, axis=0)
        for i, n in enumerate("qkv")
    )
    k_t = g.op("Transpose", [k], scope, perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [q, k_t], scope), g.const(f"{scope}.scale", head**-0.5)], scope)
    mixed = g.op("MatMul", [g.op("Softmax", [scores], scope, axis=-1), v], scope)
    merged = g.op("Transpose", [mixed], scope, perm=[0, 2, 1, 3])
    back = g.op("Reshape", [merged, g.const(f"{scope}.out_shape", [-1, tokens, width], np.int64)], scope)
    return g.linear(back, width, width, f"{scope}/proj")


def vit(name: str, width: int, depth: int, heads: int, seed: int = 0) -> Any:
    g = Builder(seed)
    side = IMAGE // PATCH
    tokens = side * side
    w = g.normal("patch_embed.proj.weight", (width, 3, PATCH, PATCH), (3 * PATCH * PATCH) ** -0.5)
    b = g.normal("patch_embed.proj.bias", (width,), 0.02)
    x = g.op("Conv", [INPUT, w, b], "/patch_embed/proj", kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    x = g.op("Reshape", [x, g.const("patch_embed.shape", [-1, width, tokens], np.int64)], "/patch_embed")
    x = g.op("Transpose", [x], "/patch_embed", perm=[0, 2, 1])
    x = g.op("Add", [x, g.normal("pos_embed", (1, tokens, width), 0.02)], "/pos_embed")
    for i in range(depth):
        s = f"/blocks.{i}"
        x = g.op(
            "Add",
            [x, attention(g, layer_norm(g, x, width, f"{s}/norm1"), width, heads, tokens, f"{s}/attn")],
            s,
        )
        h = g.linear(layer_norm(g, x, width, f"{s}/norm2"), width, 4 * width, f"{s}/mlp/fc1")
        h = g.linear(gelu(g, h, f"{s}/mlp/act"), 4 * width, width, f"{s}/mlp/fc2")
        x = g.op("Add", [x, h], s)
    x = g.op("ReduceMean", [layer_norm(g, x, width, "/norm")], "/pool", axes=[1], keepdims=0)
    head_w = g.normal("head.weight", (CLASSES, width), width**-0.5)
    g.op("Gemm", [x, head_w, g.normal("head.bias", (CLASSES,), 0.02)], "/head", out="logits", transB=1)
    return g.model(name)


def conv_bn(
    g: Builder, x: str, cin: int, cout: int, kernel: int, stride: int, scope: str, gamma: float = 1.0
) -> str:
    """Conv (no bias) then an unfolded BatchNormalization, as a training-mode export keeps it."""
    w = g.normal(f"{scope}.conv.weight", (cout, cin, kernel, kernel), (2.0 / (cin * kernel * kernel)) ** 0.5)
    pad = kernel // 2
    y = g.op(
        "Conv",
        [x, w],
        f"{scope}/conv",
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad] * 4,
    )
    bn = [
        g.normal(f"{scope}.bn.weight", (cout,), 0.05, mean=gamma),
        g.normal(f"{scope}.bn.bias", (cout,), 0.05),
        g.normal(f"{scope}.bn.running_mean", (cout,), 0.05),
        g.const(f"{scope}.bn.running_var", g.rng.uniform(0.8, 1.2, cout)),
    ]
    return g.op("BatchNormalization", [y, *bn], f"{scope}/bn", epsilon=1e-5)


def cnn(name: str, widths: list[int], seed: int = 0) -> Any:
    g = Builder(seed)
    x = g.op("Relu", [conv_bn(g, INPUT, 3, widths[0], 7, 2, "/stem")], "/stem")
    x = g.op("MaxPool", [x], "/stem/pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = widths[0]
    for stage, width in enumerate(widths):
        for block in range(2):
            s = f"/layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            h = g.op("Relu", [conv_bn(g, x, cin, width, 3, stride, f"{s}/1")], s)
            h = conv_bn(g, h, width, width, 3, 1, f"{s}/2", gamma=0.5)
            short = (
                conv_bn(g, x, cin, width, 1, stride, f"{s}/downsample") if stride > 1 or cin != width else x
            )
            x = g.op("Relu", [g.op("Add", [h, short], s)], s)
            cin = width
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "/pool")], "/pool", axis=1)
    head_w = g.normal("fc.weight", (CLASSES, cin), cin**-0.5)
    g.op("Gemm", [x, head_w, g.normal("fc.bias", (CLASSES,), 0.02)], "/fc", out="logits", transB=1)
    return g.model(name)


BUILDERS = {"vit": vit, "cnn": cnn}


def file_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("model.onnx*")) / 2**20


def ensure_model(cache: Path, name: str) -> dict[str, Any]:
    """The model ``name`` in ``cache``/name/model.onnx, generated unless cached with the same
    builder arguments; its description (``model.json``, written last)."""
    import onnx

    family, kwargs = MODELS[name]
    folder = cache / name
    meta_path = folder / "model.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("builder") == kwargs and (folder / "model.onnx").is_file():
            return meta
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    began = time.perf_counter()
    model = BUILDERS[family](name, **kwargs)
    params = sum(
        int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    external = params * 4 / 2**20 > EXTERNAL_ABOVE_MB
    path = folder / "model.onnx"
    if external:
        onnx.save(
            model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=1024
        )
    else:
        onnx.save(model, str(path))
    del model
    onnx.checker.check_model(str(path), full_check=True)
    meta = {
        "name": name,
        "family": family,
        "builder": kwargs,
        "params": params,
        "mb": round(file_mb(folder), 1),
        "external_data": external,
        "opset": OPSET,
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "logits_std": logits_std(path),
        "generated_s": round(time.perf_counter() - began, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def logits_std(path: Path) -> float:
    """The standard deviation of the FP32 logits on four random images (a sanity check of the
    weights' scale: neither vanishing nor exploding)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(7).standard_normal((4, 3, IMAGE, IMAGE), dtype=np.float32)
    (logits,) = session.run(["logits"], {INPUT: images})
    return round(float(np.std(logits)), 4)


def ensure_data(cache: Path) -> tuple[Path, Path]:
    """Calibration and test images ~ N(0, 1), shared by every model (one input shape)."""
    folder = cache / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for section, count, seed in (("calib", CALIB_SAMPLES, 1), ("test", TEST_SAMPLES, 2)):
        path = folder / f"{section}.npy"
        if not path.is_file() or np.load(path, mmap_mode="r").shape[0] != count:
            rng = np.random.default_rng(seed)
            np.save(path, rng.standard_normal((count, 3, IMAGE, IMAGE), dtype=np.float32))
        paths.append(path)
    return paths[0], paths[1]


def scale_case(meta: dict[str, Any], model: Path, calib: Path, test: Path) -> Case:
    config = {
        "model": {"path": str(model), "inputs": {INPUT: [1, 3, IMAGE, IMAGE]}},
        "calibration": {"source": str(calib), "batch_size": 1, "calib_iterations": 0},
        "test": {"source": str(test), "batch_size": 1, "test_iterations": 0, "objective": "cosine"},
        "search": {"accept_int8_decay": BUDGET},
    }
    what = f"{meta['family']} {meta['params'] / 1e6:.1f} M parameters, {meta['mb']:.0f} MB"
    return Case(meta["name"], what, model, config)


# --- measuring ----------------------------------------------------------------------------------


class TreeSampler:
    """RSS of a process and all its descendants (psutil), sampled when called; keeps the timeline
    of the sums and returns the larger of the sum and the process's own VmHWM."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.timeline: list[tuple[float, float]] = []

    def __call__(self, pid: int) -> float | None:
        import psutil

        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        mb = total / 2**20
        if total:  # 0: the process has exited (a zombie until it is waited for)
            self.timeline.append((time.monotonic() - self.began, mb))
        return max(mb, vm_hwm_mb(pid) or 0.0)

    def peak_at(self) -> float | None:
        """Seconds from the start to the largest sampled sum."""
        return max(self.timeline, key=lambda x: x[1])[0] if self.timeline else None

    def coarse(self, points: int = 60) -> list[list[float]]:
        """The timeline as at most ``points`` [seconds, largest MB in the interval] pairs."""
        if not self.timeline:
            return []
        step = max(self.timeline[-1][0] / points, POLL_S)
        bins: dict[int, float] = {}
        for t, mb in self.timeline:
            k = int(t // step)
            bins[k] = max(bins.get(k, 0.0), mb)
        return [[round((k + 1) * step, 1), round(mb)] for k, mb in sorted(bins.items())]


def stored_trials(db: Path) -> list[tuple[float, float | None, str]]:
    """(start, end, state) of every trial in an Optuna SQLite storage, epoch seconds (Optuna
    writes local naive datetimes), by start."""
    if not db.is_file():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT datetime_start, datetime_complete, state FROM trials").fetchall()
    finally:
        con.close()

    def stamp(text: str | None) -> float | None:
        return datetime.fromisoformat(text).timestamp() if text else None

    trials = [(stamp(a), stamp(b), str(state)) for a, b, state in rows if a]
    return sorted(trials, key=lambda t: t[0])  # type: ignore[arg-type, return-value]


def tune_figures(sub: Path, started: float) -> dict[str, Any]:
    """Time to first trial, mean time per trial and their source, the study's outcome, and when
    its first trial started (seconds from the process start): from study_summary.json's timings
    when present, else from the study's storage."""
    path = sub / "study_summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    per = [
        t["timings"]["trial"]
        for t in summary.get("trials", [])
        if (t.get("timings") or {}).get("trial") is not None
    ]
    stored = stored_trials(sub / "study.db")
    done = [(s, e) for s, e, state in stored if state == "COMPLETE" and e is not None]
    # From the process's start, as the one-shot tools' wall time is: the storage's first completed
    # trial; the summary's figure (from the set-up's start, imports not counted) only without it.
    first = (
        min(e for _, e in done) - started if done else (summary.get("timings") or {}).get("to_first_trial_s")
    )
    sources = ["study.db" if done else "summary", "summary" if per else "study.db"]
    if not per:
        per = [e - s for s, e in done]
    best = summary.get("best") or {}
    return {
        "first_trial_s": first,
        "per_trial_s": statistics.fmean(per) if per else None,
        "timing_source": "first: {}, per trial: {}".format(*sources),
        "trials_started_at_s": stored[0][0] - started if stored else None,
        "best_decay": best.get("decay"),
        "within_budget": summary.get("within_budget"),
        "time_to_budget_s": summary.get("time_to_budget_s"),
        "stage_timings": summary.get("timings"),
    }


@dataclass
class ScaleRow:
    """One contender on one model (None: not measured)."""

    model: str
    family: str
    params: int
    mb: float
    contender: str
    peak_rss_mb: float | None = None
    wall_s: float | None = None
    tool_s: float | None = None
    first_trial_s: float | None = None
    per_trial_s: float | None = None
    trials: int | None = None
    load_start: float | None = None
    load_end: float | None = None
    peak_at_s: float | None = None
    peak_stage: str | None = None
    timing_source: str | None = None
    best_decay: float | None = None
    within_budget: bool | None = None
    time_to_budget_s: float | None = None
    stage_timings: dict[str, Any] | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)
    started_utc: str = ""
    rss_timeline: list[list[float]] = field(default_factory=list)

    def line(self) -> str:
        """The row's figures in one line, the load average beside the timings."""
        if self.error and self.peak_rss_mb is None:
            return f"failed: {self.error} (load {self.load_start:.1f} -> {self.load_end:.1f})"
        text = (
            f"peak RSS {fmt(self.peak_rss_mb, '.0f', '?')} MB, wall {fmt(self.wall_s, '.1f', '?')} s, "
            f"first trial {fmt(self.first_trial_s, '.1f', '?')} s, {fmt(self.per_trial_s, '.1f', '?')} s/trial, "
            f"{fmt(self.trials, 'd', '?')} trials (load {self.load_start:.1f} -> {self.load_end:.1f})"
        )
        if self.best_decay is not None:
            text += f"; best decay {self.best_decay:.4f} ({'within' if self.within_budget else 'over'})"
        return text + (f"; failed: {self.error}" if self.error else "")


def run_one(
    case: Case, meta: dict[str, Any], name: str, folder: Path, work: Path, args: argparse.Namespace
) -> ScaleRow:
    """Contender ``name`` on ``case`` in a fresh process; its figures."""
    kind = CONTENDERS[name][0]
    sub = folder / slug(name)
    options = SimpleNamespace(trials=None, search_timeout=args.timeout, no_tracking=not args.tracking)
    spec = contender_spec(case, name, folder, sub, options)
    row = ScaleRow(case.name, meta["family"], meta["params"], meta["mb"], name)
    row.started_utc = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    row.load_start = os.getloadavg()[0]
    sampler = TreeSampler()
    started, began = time.time(), time.perf_counter()
    result = run_contender(spec, sub, work, args.kill_after, sample=sampler, interval=POLL_S)
    row.wall_s = time.perf_counter() - began
    row.load_end = os.getloadavg()[0]
    peaks = [result.get(k) for k in ("polled_peak_mb", "peak_rss_mb")]
    row.peak_rss_mb = max((p for p in peaks if p is not None), default=None)
    row.tool_s, row.trials, row.error = result.get("seconds"), result.get("trials"), result.get("error")
    if row.error:  # the contender's folder, which is deleted, as a short relative name
        row.error = row.error.replace(str(sub), f".work/{case.name}/{slug(name)}")
    row.peak_at_s, row.rss_timeline = sampler.peak_at(), sampler.coarse()
    if kind == "autoquant-tune":
        figures = tune_figures(sub, started)
        trials_at = figures.pop("trials_started_at_s")
        for key, value in figures.items():
            setattr(row, key, value)
        if trials_at is not None and row.peak_at_s is not None:
            row.peak_stage = "set-up" if row.peak_at_s < trials_at else "trials"
    elif row.error is None:
        row.first_trial_s = row.per_trial_s = row.wall_s
        row.timing_source = "wall"
    if row.error and (sub / "log.txt").is_file():  # the traceback, kept before the folder goes
        row.log_tail = [x[:400] for x in (sub / "log.txt").read_text(errors="replace").splitlines()[-25:]]
    if not args.keep_work:
        shutil.rmtree(sub, ignore_errors=True)
    return row


# --- the report ---------------------------------------------------------------------------------


def isa_label() -> str:
    from autoquant.hardware import host_isa

    return host_isa().label


def table(rows: list[ScaleRow], isa: str) -> list[str]:
    lines = [
        "| model | params M | MB | contender | peak RSS MB | wall s | time to first trial s | time per trial s "
        "| trials | load start / end | ISA | started UTC | notes |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        notes = []
        if r.best_decay is not None:
            notes.append(
                f"best decay {r.best_decay:.4f} ({'within' if r.within_budget else 'over'} {BUDGET})"
            )
        if r.peak_stage:
            notes.append(f"peak in {r.peak_stage} at {r.peak_at_s:.0f} s")
        if r.timing_source and r.timing_source != "wall":
            notes.append(f"timings: {r.timing_source}")
        if r.error:
            notes.append(f"failed: {r.error}")
        lines.append(
            f"| {r.model} | {r.params / 1e6:.1f} | {r.mb:.0f} | {r.contender} | {fmt(r.peak_rss_mb, '.0f')} "
            f"| {fmt(r.wall_s, '.1f')} | {fmt(r.first_trial_s, '.1f')} | {fmt(r.per_trial_s, '.1f')} "
            f"| {fmt(r.trials, 'd')} | {r.load_start:.2f} / {r.load_end:.2f} | {isa} | {r.started_utc[11:16]} "
            f"| {'; '.join(notes).replace('|', '/')} |"
        )
    return lines


def report(
    rows: list[ScaleRow],
    models: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    seconds: float,
    notes: str,
) -> str:
    isa = isa_label()
    versions = ", ".join(f"{p} {package_version(p)}" for p in ("nncf", "onnxruntime", "onnx", "optuna"))
    model_lines = [
        "| model | family | builder | params M | MB | external data | nodes | FP32 logits std |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for name, m in models.items():
        builder = ", ".join(f"{k} {v}" for k, v in m["builder"].items())
        model_lines.append(
            f"| {name} | {m['family']} | {builder} | {m['params'] / 1e6:.1f} | {m['mb']:.0f} "
            f"| {'yes' if m['external_data'] else 'no'} | {m['nodes']} | {m['logits_std']} |"
        )
    return "\n".join(
        [
            "# Scale: autoquant, NNCF and onnxruntime on generated models of growing size",
            "",
            "Written by `python bench/scale.py` (how the models are made and every figure measured: its "
            "docstring). Input [batch, 3, 64, 64] (ViT: 16x16 patches, 16 tokens); 32 calibration and 64 "
            f"test images ~ N(0, 1); objective cosine against FP32, budget {BUDGET}; "
            f"autoquant tune full: search.timeout {args.timeout:.0f} s; contenders killed after "
            f"{args.kill_after:.0f} s; MLflow tracking {'on' if args.tracking else 'off'}.",
            "",
            machine_line(),
            f"CPU instruction set (`autoquant.hardware.host_isa().label`): **{isa}**; {versions}.",
            f"This run: {seconds / 60:.1f} minutes; load average = the 1-minute figure at each contender's start "
            "and end (the machine is shared: timings rise with it).",
            "",
            "Peak RSS = the whole process tree (psutil every 50 ms, at least the process's VmHWM), "
            "wall = process start to exit; time to first trial and per trial as the docstring says "
            "(their source in the notes for autoquant).",
            "",
            *table(rows, isa),
            "",
            *([notes.strip(), ""] if notes.strip() else []),
            "## Models",
            "",
            *model_lines,
            "",
            "![peak RSS against model size](peak_rss.png)",
            "",
        ]
    )


def plot(rows: list[ScaleRow], path: Path) -> str:
    """Peak RSS against model size per contender (log-log; ViT solid, CNN dashed) in ``path``;
    a note when matplotlib is missing."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: {exc}"
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sizes = [r.mb for r in rows]
    for i, name in enumerate(dict.fromkeys(r.contender for r in rows)):
        for family, style, marker in (("vit", "-", "o"), ("cnn", "--", "s")):
            points = sorted(
                (r.mb, r.peak_rss_mb)
                for r in rows
                if r.contender == name and r.family == family and r.peak_rss_mb is not None
            )
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    style,
                    marker=marker,
                    color=colors[i % len(colors)],
                    label=f"{name} ({family})",
                )
    failed = [(r.mb, r.peak_rss_mb) for r in rows if r.error and r.peak_rss_mb is not None]
    if failed:
        ax.plot(
            *zip(*failed, strict=True), "x", color="black", markersize=10, label="failed (peak until then)"
        )
    if sizes:
        ax.plot([min(sizes), max(sizes)], [min(sizes), max(sizes)], ":", color="grey", label="model size")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("model size, MB (FP32 file)")
    ax.set_ylabel("peak RSS of the process tree, MB")
    ax.set_title("bench/scale.py: peak memory against model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench/scale", help="results, cache and work folder"
    )
    parser.add_argument("--sizes", help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--contenders", help="comma-separated subset of: " + ", ".join(SCALE_CONTENDERS))
    parser.add_argument(
        "--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)} with {', '.join(QUICK_CONTENDERS)}"
    )
    parser.add_argument("--timeout", type=float, default=600, help="search.timeout of autoquant tune full, s")
    parser.add_argument("--kill-after", type=float, default=3600, help="seconds before a contender is killed")
    parser.add_argument("--tracking", action="store_true", help="autoquant tune with MLflow tracking")
    parser.add_argument(
        "--append", action="store_true", help="keep the rows of results.json that this run does not measure"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep <output>/.work")
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    models = args.sizes.split(",") if args.sizes else list(QUICK_MODELS if args.quick else MODELS)
    names = (
        args.contenders.split(",")
        if args.contenders
        else list(QUICK_CONTENDERS if args.quick else SCALE_CONTENDERS)
    )
    unknown = [m for m in models if m not in MODELS] + [n for n in names if n not in SCALE_CONTENDERS]
    if unknown:
        raise SystemExit(
            f"unknown {', '.join(unknown)}; models: {', '.join(MODELS)}; contenders: {', '.join(SCALE_CONTENDERS)}"
        )
    return models, names


def save(
    out: Path, rows: list[ScaleRow], metas: dict[str, Any], args: argparse.Namespace, seconds: float
) -> None:
    """results.md, results.json and the plot of ``rows`` in ``out`` (rewritten after every contender,
    so that a run cut short leaves its figures so far)."""
    rows = sorted(rows, key=lambda r: (list(MODELS).index(r.model), SCALE_CONTENDERS.index(r.contender)))
    metas = {k: metas[k] for k in MODELS if k in metas}
    note = plot(rows, out / "peak_rss.png")
    if note:
        print(note, flush=True)
    notes = (out / "notes.md").read_text() if (out / "notes.md").is_file() else ""
    (out / "results.md").write_text(report(rows, metas, args, seconds, notes))
    data = {
        "isa": isa_label(),
        "machine": machine_line(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "models": metas,
        "rows": [asdict(r) for r in rows],
    }
    (out / "results.json").write_text(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    models, names = selected(args)
    out = args.output.resolve()
    cache, work = out / "cache", out / ".work"
    confine(work)
    os.environ.update(MPLCONFIGDIR=str(work / "mpl"), PYTHONPYCACHEPREFIX=str(work / "pycache"))
    from autoquant.logs import quiet_onnxruntime

    quiet_onnxruntime()
    print(
        f"ISA {isa_label()}; load average {os.getloadavg()[0]:.2f}; {len(models)} models x {len(names)} contenders",
        flush=True,
    )
    old: dict[str, Any] = {"rows": [], "models": {}}
    if args.append and (out / "results.json").is_file():
        old = json.loads((out / "results.json").read_text())
    began = time.monotonic()
    calib, test = ensure_data(cache)
    rows: list[ScaleRow] = []
    metas: dict[str, dict[str, Any]] = dict(old["models"])
    try:
        for model in models:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            meta = metas[model] = ensure_model(cache, model)
            print(
                f"{model}: {meta['params'] / 1e6:.1f} M parameters, {meta['mb']:.0f} MB"
                f"{' (external data)' if meta['external_data'] else ''}, {meta['nodes']} nodes, FP32 logits "
                f"std {meta['logits_std']} (ready in {time.perf_counter() - t0:.1f} s, load {load:.2f})",
                flush=True,
            )
            folder = work / model
            case = scale_case(meta, cache / model / "model.onnx", calib, test)
            prepare_case(case, folder)
            for name in names:
                row = run_one(case, meta, name, folder, work, args)
                print(f"  {model} {name}: {row.line()}", flush=True)
                rows.append(row)
                measured = {(r.model, r.contender) for r in rows}
                kept = [ScaleRow(**r) for r in old["rows"] if (r["model"], r["contender"]) not in measured]
                save(out, [*kept, *rows], metas, args, time.monotonic() - began)
            if not args.keep_work:
                shutil.rmtree(folder, ignore_errors=True)
        minutes = (time.monotonic() - began) / 60
        print(
            f"wrote {out / 'results.md'} ({minutes:.1f} minutes; load {os.getloadavg()[0]:.2f})", flush=True
        )
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
