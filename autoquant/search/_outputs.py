"""What a study leaves in its output folder: the best trial's model, tables and
``best_config.yaml`` (rewritten after every improving trial), and at its end the study summary
``study_summary.json`` with its HTML report (and the MLflow parent run's last logs).

The model is ``model.int8.onnx`` only when the best trial is within the budget; while no trial
is, the closest one is ``model.over-budget.int8.onnx``, so that nobody ships it by mistake. Only
one of the two is ever in the folder, and ``best_trial.json`` names it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.engine import QuantizedModel, Sensitivity, write_files, write_outputs
from autoquant.names import (
    BEST_CONFIG_FILE,
    BEST_TRIAL_FILE,
    MODEL_FILE,
    OVER_BUDGET_MODEL_FILE,
    REPORT_FILE,
    SENSITIVITY_FILE,
    SUMMARY_FILE,
    model_file,
)
from autoquant.search._outcome import TrialOutcome
from autoquant.search._report import render_report
from autoquant.search._report_files import output_files, rebuild_command
from autoquant.search._study_report import render_study_report
from autoquant.search._summary import TuneResult, summary
from autoquant.storage import display_url
from autoquant.tracking import MlflowTracker, NullTracker

logger = logging.getLogger(__name__)


def best_config(
    config: StudyConfig, quantization: QuantizationConfig, fp32_nodes: tuple[str, ...]
) -> StudyConfig:
    """A config that ``autoquant quantize`` turns into the same model: the FP32 nodes are listed by name."""
    fixed = quantization.model_copy(
        update={
            "nodes_to_exclude": list(fp32_nodes),
            "first_layer_fp32": False,
            "norm_layers_fp32": False,
            "fp32_layers": 0,
        }
    )
    return config.replace(quantization=fixed)


def write_best(
    config: StudyConfig, outcome: TrialOutcome, result: QuantizedModel, quantization: QuantizationConfig
) -> None:
    """Write a new best trial's model, tables and ``best_config.yaml`` (all or none); the model is
    named by :func:`~autoquant.names.model_file`, and the other name's model is removed."""
    out = config.output.directory
    built = quantization.model_copy(update={"reduce_range": result.reduce_range})  # not auto
    chosen = best_config(config, built, result.fp32_nodes)
    name = model_file(outcome.within_budget)
    write_outputs(result, chosen, out, {BEST_CONFIG_FILE: chosen.to_yaml().encode()}, model_name=name)
    other = MODEL_FILE if name == OVER_BUDGET_MODEL_FILE else OVER_BUDGET_MODEL_FILE
    for stale in (other, f"{other}.data"):  # its external data too, if it had any
        (out / stale).unlink(missing_ok=True)
    logger.debug("trial %d is the new best; outputs written to %s", outcome.number, out)


def holds_best(config: StudyConfig, study_name: str, outcome: TrialOutcome) -> bool:
    """Whether the output folder holds ``outcome``'s trial of the study under the model name its
    budget verdict gives (``best_trial.json`` says; a folder written before the over-budget name
    existed names no model, and is rewritten)."""
    try:
        marker = json.loads((config.output.directory / BEST_TRIAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        marker.get("study") == study_name
        and marker.get("trial") == outcome.number
        and marker.get("model") == model_file(outcome.within_budget)
    )


def publish_best(
    config: StudyConfig,
    study_name: str,
    outcome: TrialOutcome,
    result: QuantizedModel,
    quantization: QuantizationConfig,
) -> None:
    """Write a best trial's outputs unless the folder holds them already, then ``best_trial.json``
    (call under the study lock: a compare-and-set between the processes)."""
    if holds_best(config, study_name, outcome):
        return
    write_best(config, outcome, result, quantization)
    marker = {
        "study": study_name,
        "trial": outcome.number,
        "key": outcome.key,
        "decay": outcome.decay,
        "within_budget": outcome.within_budget,
        "model": model_file(outcome.within_budget),
    }
    write_files(config.output.directory, {BEST_TRIAL_FILE: json.dumps(marker, indent=2).encode()})


def write_sensitivity(config: StudyConfig, sensitivity: Sensitivity, name: str) -> None:
    """Write a sensitivity ranking into the output folder, as JSON and as an HTML report."""
    report = render_report(sensitivity, f"autoquant sensitivity: {name}", {"model": str(config.model.path)})
    files = {SENSITIVITY_FILE: sensitivity.to_json().encode(), REPORT_FILE: report.encode()}
    write_files(config.output.directory, files)


def finish(
    config: StudyConfig, result: TuneResult, tracker: NullTracker | MlflowTracker, close_parent: bool
) -> None:
    """Write the study summary and its report (the Pareto front, and the sensitivity ranking the
    folder holds); the last process out closes the MLflow parent run."""
    out = config.output.directory
    summarised = summary(result, config.quantization.reduce_range)
    data = summarised.to_dict()  # the edges: the JSON file, the HTML report, MLflow
    details = {
        "model": str(config.model.path),
        "budget": str(result.budget),
        "CPU": summarised.latency["cpu_isa"],
    }
    report = render_study_report(
        data,
        f"autoquant study: {result.study_name}",
        details,
        _sensitivity(out),
        settings=_settings(config),
        files=output_files(out, (SUMMARY_FILE, REPORT_FILE)),
        rebuild=rebuild_command(out) if (out / BEST_CONFIG_FILE).is_file() else None,
    )
    write_files(out, {SUMMARY_FILE: json.dumps(data, indent=2).encode(), REPORT_FILE: report.encode()})
    tracker.finish(data, out / summarised.model, out / REPORT_FILE, close_parent=close_parent)
    if config.tracking.enabled:
        logger.info(
            "MLflow: the study waited %.2f s before its first trial and %.2f s at its end; logging "
            "took %.2f s in the background",
            tracker.attach_seconds,
            tracker.finish_seconds,
            tracker.busy_seconds,
        )


def _settings(config: StudyConfig) -> dict:
    """The config's sections for the report, the passwords of storage and tracking URLs masked."""
    settings = config.model_dump(mode="json")
    for section, key in (("storage", "url"), ("tracking", "uri")):
        if settings[section].get(key):
            settings[section][key] = display_url(settings[section][key])
    return settings


def _sensitivity(out: Path) -> Sensitivity | None:
    """The sensitivity ranking in the output folder, if there is one that reads."""
    try:
        return Sensitivity.from_json((out / SENSITIVITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
