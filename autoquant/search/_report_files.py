"""The study report's output-files section: what each file in the output folder is, and the
command that rebuilds the best trial's model."""

from __future__ import annotations

import html
import shlex
from collections.abc import Sequence
from pathlib import Path

from autoquant.names import (
    BEST_CONFIG_FILE,
    BEST_TRIAL_FILE,
    CONFIG_FILE,
    FP32_NODES_FILE,
    MLFLOW_ARTIFACTS_DIR,
    MLFLOW_DB_FILE,
    MODEL_FILE,
    OVER_BUDGET_MODEL_FILE,
    REPORT_FILE,
    SENSITIVITY_CSV_FILE,
    SENSITIVITY_FILE,
    STUDY_DB_FILE,
    SUMMARY_FILE,
    TABLE_FILE,
    TRT_CACHE_FILE,
)

FILE_ROLES = {
    MODEL_FILE: "the best INT8 model (QDQ), within the budget",
    OVER_BUDGET_MODEL_FILE: "the closest trial's INT8 model: no trial is within the budget, do not ship it",
    TABLE_FILE: "the per-tensor ranges of that model",
    TRT_CACHE_FILE: "the same ranges as a TensorRT-style calibration cache",
    FP32_NODES_FILE: "the nodes kept in FP32, a list onnxruntime's nodes_to_exclude accepts",
    BEST_CONFIG_FILE: "the best trial's choices: the command below rebuilds its model",
    BEST_TRIAL_FILE: "which trial the model and tables come from",
    CONFIG_FILE: "the config the model was written with, every default and path resolved",
    SUMMARY_FILE: "the study: every trial, timings, latency, the Pareto front",
    REPORT_FILE: "this page",
    SENSITIVITY_FILE: "the per-layer sensitivity ranking",
    SENSITIVITY_CSV_FILE: "the same ranking as CSV",
    STUDY_DB_FILE: "the Optuna study (SQLite): the same tune command resumes it",
    MLFLOW_DB_FILE: "the MLflow store",
    MLFLOW_ARTIFACTS_DIR: "the MLflow store's artifacts",
}


def role(name: str) -> str:
    """What the output folder's file ``name`` is ("" for a file autoquant does not write)."""
    if name.endswith(".data") and name[: -len(".data")] in (MODEL_FILE, OVER_BUDGET_MODEL_FILE):
        return "the model's external data (its weights)"
    return FILE_ROLES.get(name, "")


def output_files(directory: Path, writing: Sequence[str] = ()) -> list[str]:
    """The names in the output folder (hidden files left out) and ``writing``, sorted."""
    try:
        present = {p.name for p in directory.iterdir() if not p.name.startswith(".")}
    except OSError:
        present = set()
    return sorted(present | set(writing))


def rebuild_command(directory: Path) -> str:
    """The command that rebuilds the best trial's model from ``best_config.yaml``, into a folder of
    its own (so that the study's files stay as they are)."""
    config = directory / BEST_CONFIG_FILE
    return f"autoquant quantize {shlex.quote(str(config))} --output {shlex.quote(str(directory / 'rebuilt'))}"


def files_section(files: Sequence[str], rebuild: str | None, within_budget: bool = True) -> str:
    """The output files, each with what it is, and the rebuild command (``within_budget``: whether
    the model it rebuilds is)."""
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(role(name))}</td></tr>"
        for name in files
    )
    table = (
        f'<table id="files-table"><tr><th>file</th><th>what it is</th></tr>{rows}</table>' if files else ""
    )
    warning = (
        ""
        if within_budget
        else f" The rebuilt model is named {MODEL_FILE} all the same: it is over the budget, like the study's."
    )
    command = (
        f"""<p>The model is rebuilt, bit for bit, from the best trial's choices by:</p>
<pre><code id="rebuild">{html.escape(rebuild)}</code></pre>
<p>With <code>--output</code> the study's folder stays as it is; without it, <code>quantize</code>
writes into the folder that <code>best_config.yaml</code> names, the study's own.{html.escape(warning)}</p>"""
        if rebuild
        else ""
    )
    return f'<h2 id="files">Output files</h2>\n{table}\n{command}'
