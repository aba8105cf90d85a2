"""The pipeline from a config to a quantized model, stage by stage.

``config -> data readers -> graph -> statistics -> thresholds -> quantize -> outputs``.
Each function here runs one or two stages and passes small frozen results on; the CLI and the
search call these and nothing deeper.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from autoquant.common import ProgressFn, release_memory
from autoquant.config import DataConfig, QuantizationConfig, StudyConfig
from autoquant.data import InputSpec, open_reader
from autoquant.engine import (
    BiasCorrector,
    QuantizedModel,
    Requantizer,
    Sensitivity,
    Statistics,
    analyze,
    collect_statistics,
    compute_thresholds,
    quantize_model,
    statistics_key,
)
from autoquant.engine.graph import ModelGraph, model_inputs, prepare_model
from autoquant.errors import ConfigError
from autoquant.evaluation import Evaluator
from autoquant.usercode import code_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibrated:
    """A prepared model, the statistics of its activations and the bias corrector on the first
    calibration samples (None: ``quantization.bias_correction`` cannot be used)."""

    graph: ModelGraph
    stats: Statistics
    corrector: BiasCorrector | None = None


def user_cache_dir() -> Path:
    """The user's autoquant cache: ``$XDG_CACHE_HOME/autoquant``, by default ``~/.cache/autoquant``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "autoquant"


def cache_dir(config: StudyConfig) -> Path:
    """Folder for prepared models, statistics and FP32 references (``calibration.cache_dir`` or the user cache).

    Every file in it is named by content hashes (model bytes, data, settings), so studies with
    different output folders share it safely.
    """
    return config.calibration.cache_dir or user_cache_dir()


def input_specs(config: StudyConfig) -> tuple[InputSpec, ...]:
    """The model's inputs as the data must feed them: read from the file, shapes from ``model.inputs``.

    Raises:
        ConfigError: ``model.inputs`` names an input the model does not have.
        ModelError: The model file cannot be read.
    """
    specs = model_inputs(config.model.path)
    names = {spec.name for spec in specs}
    unknown = sorted(set(config.model.inputs) - names)
    if unknown:
        raise ConfigError(
            f"model.inputs: {', '.join(unknown)} is not an input of {config.model.path.name}; "
            f"its inputs are: {', '.join(sorted(names))}"
        )
    return tuple(
        replace(spec, shape=tuple(config.model.inputs[spec.name]))
        if spec.name in config.model.inputs
        else spec
        for spec in specs
    )


def check_data(config: StudyConfig, specs: Sequence[InputSpec], every_sample: bool = False) -> dict[str, int]:
    """Read the first batch (or every sample) of the calibration and test sets against the inputs.

    Returns:
        The number of samples of each data set (``calibration``, ``test``) that will be read.

    Raises:
        DataError: A data set is missing, empty, or holds a sample the model cannot take (shape,
            dtype, or NaN and infinity unless the section sets ``allow_nonfinite``).
    """
    counts = {}
    for name, data, limit in (
        ("calibration", config.calibration, config.calibration.calib_iterations),
        ("test", config.test, config.test.test_iterations),
    ):
        if data.source is None:
            continue
        reader = open_reader(data, list(specs), limit=limit)
        if every_sample:
            for _ in reader:  # each sample is decoded and validated
                pass
        else:
            next(reader.batches(data.batch_size))
        counts[name] = len(reader)
    return counts


def load_graph(config: StudyConfig, persist: bool = True) -> ModelGraph:
    """Check the first batch of the data, then prepare the config's model (see :func:`input_specs`).

    The data are checked first, so that bad data leave nothing in the cache. ``persist=False``
    writes nothing (see :func:`autoquant.engine.graph.prepare_model`).
    """
    specs = input_specs(config)
    check_data(config, specs)
    graph = prepare_model(
        config.model.path, cache_dir(config), persist=persist, equalize=config.quantization.equalize
    )
    release_memory()  # the model read to prepare and describe it
    shapes = {spec.name: spec.shape for spec in specs}
    return replace(graph, inputs=tuple(replace(s, shape=shapes.get(s.name, s.shape)) for s in graph.inputs))


def data_fingerprint(data: DataConfig, with_source: bool = True) -> str:
    """Hash of a data source's bytes and of how it is read (a callable is hashed by its name and file).

    ``with_source=False`` leaves out the path itself (the same data mounted elsewhere hash alike;
    a ``module:function`` keeps its name).
    """
    digest = hashlib.sha256()
    for part in (data.format, data.data_preprocess_str, data.image_data_preprocess, data.on_decode_error):
        digest.update(f"{part}|".encode())
    if data.allow_nonfinite:  # a cache made from allowed NaN is not reused by a run that refuses them
        digest.update(b"allow_nonfinite|")
    path = code_file(str(data.source)) or Path(str(data.source))
    if with_source or not (path.is_file() or path.is_dir()):
        digest.update(str(data.source).encode())
    elif code_file(str(data.source)) is not None:
        digest.update(str(data.source).rpartition(":")[2].encode())  # the function's name
    files = (
        sorted(p for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else [path]
        if path.is_file()
        else []
    )
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def calibrate(
    config: StudyConfig,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
    graph: ModelGraph | None = None,
) -> Calibrated:
    """Prepare the model and collect activation statistics (from the cache when possible).

    Args:
        config: The study config.
        progress: Called with the number of samples after each calibration batch.
        use_cache: Read and write the statistics cache.
        graph: The config's model, if :func:`load_graph` already prepared it.
    """
    graph = graph or load_graph(config)
    calib = config.calibration
    reader = open_reader(calib, list(graph.inputs), limit=calib.calib_iterations)
    key = statistics_key(
        graph.model_hash, data_fingerprint(calib), calib.histogram_bins, calib.calib_iterations
    )

    def batches():
        return (batch.inputs for batch in reader.batches(graph.batch_size(calib.batch_size)))

    stats = collect_statistics(
        lambda: graph.load(weights=False),  # a large model's weights stay in their file
        list(graph.activations),
        batches,
        key,
        cache_dir(config) if use_cache else None,
        calib.histogram_bins,
        progress,
        calib.memory_budget_mb * 2**20,
        graph.prepared_path.parent,
    )
    return Calibrated(graph=graph, stats=stats, corrector=bias_corrector(config, graph))


def bias_corrector(config: StudyConfig, graph: ModelGraph) -> BiasCorrector:
    """The corrector of ``quantization.bias_correction``, on the first
    ``calibration.bias_correction_samples`` calibration samples (read again at each use)."""
    calib = config.calibration
    limit = calib.bias_correction_samples
    if calib.calib_iterations:
        limit = min(limit, calib.calib_iterations)

    def feeds():
        reader = open_reader(calib, list(graph.inputs), limit=limit)
        return (batch.inputs for batch in reader.batches(graph.batch_size(calib.batch_size)))

    return BiasCorrector(graph, feeds)


def expected_samples(config: StudyConfig, graph: ModelGraph) -> int:
    """Number of calibration samples the pass will read (for progress bars)."""
    return len(open_reader(config.calibration, list(graph.inputs), limit=config.calibration.calib_iterations))


def scored_samples(config: StudyConfig, graph: ModelGraph) -> int:
    """Number of test samples a trial scores (0 without a test set)."""
    if config.test.source is None:
        return 0
    return len(open_reader(config.test, list(graph.inputs), limit=config.test.test_iterations))


def quantize(
    calibrated: Calibrated,
    quantization: QuantizationConfig,
    ranking: Sequence[str] = (),
    timings: dict[str, float] | None = None,
    requantizer: Requantizer | None = None,
) -> QuantizedModel:
    """Thresholds, quantization and, with ``quantization.bias_correction``, bias correction, for one
    set of quantization choices; the seconds each took go into ``timings`` (``thresholds``,
    ``quantize``, ``bias_correction``) when it is given. A ``requantizer`` rewrites the scales of a
    graph structure it has built before instead of quantizing again; the bias correction is
    applied to a copy of its model.

    Raises:
        ConfigError: ``bias_correction`` without a corrector (``calibrated`` built by hand).
    """
    timings = {} if timings is None else timings
    began = time.perf_counter()
    ranges = compute_thresholds(calibrated.stats, quantization)
    middle = time.perf_counter()
    if requantizer is not None:
        result = requantizer.quantize(ranges, quantization, ranking)
    else:
        result = quantize_model(calibrated.graph, ranges, quantization, ranking)
    ended = time.perf_counter()
    timings.update(thresholds=middle - began, quantize=ended - middle)
    if quantization.bias_correction:
        if calibrated.corrector is None:
            raise ConfigError("quantization.bias_correction needs the calibration data (no bias corrector)")
        model, corrected = calibrated.corrector.correct(result.model)
        result = replace(result, model=model, bias_corrected=corrected)
        timings["bias_correction"] = time.perf_counter() - ended
    return result


def sample_feeds(config: StudyConfig, graph: ModelGraph, limit: int) -> list[dict[str, np.ndarray]]:
    """The first ``limit`` test samples (calibration samples without a test set), as model feeds."""
    data = config.test if config.test.source is not None else config.calibration
    reader = open_reader(data, list(graph.inputs), limit=limit)
    return [batch.inputs for batch in reader.batches(graph.batch_size(limit))]


def evaluator(config: StudyConfig, graph: ModelGraph) -> Evaluator:
    """An :class:`~autoquant.evaluation.Evaluator` on the config's test set, with its FP32 cache."""
    return Evaluator(config, graph, cache_dir(config), data_fingerprint(config.test))


def analyze_layers(
    config: StudyConfig, calibrated: Calibrated, progress: ProgressFn | None = None
) -> Sensitivity:
    """Per-layer sensitivity of the config's quantization choices on ``search.data_limit`` samples."""
    feeds = sample_feeds(config, calibrated.graph, config.search.data_limit)
    ranges = compute_thresholds(calibrated.stats, config.quantization)
    outputs = list(config.model.outputs) or list(calibrated.graph.outputs)
    return analyze(calibrated.graph, ranges, config.quantization, feeds, outputs, progress)


__all__ = [
    "Calibrated",
    "InputSpec",
    "analyze_layers",
    "bias_corrector",
    "cache_dir",
    "calibrate",
    "check_data",
    "data_fingerprint",
    "evaluator",
    "expected_samples",
    "input_specs",
    "load_graph",
    "quantize",
    "sample_feeds",
    "scored_samples",
    "user_cache_dir",
]
