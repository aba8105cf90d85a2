"""The names autoquant writes and stores, defined once: files in the output folder, the keys of
trials, and the user attributes of Optuna trials and studies. A study resumes by these names, so
they change only with a migration."""

from __future__ import annotations

from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("autoquant")
except PackageNotFoundError:  # running from a checkout without installation
    VERSION = "0.0.0"

# --- files in the output folder ------------------------------------------------------------------
MODEL_FILE = "model.int8.onnx"  # the best trial's model, when it is within the budget
# the closest trial's model when no trial is within the budget: named so that nobody ships it
OVER_BUDGET_MODEL_FILE = "model.over-budget.int8.onnx"
TABLE_FILE = "calibration_table.json"
TRT_CACHE_FILE = "calibration.cache"
FP32_NODES_FILE = "fp32_nodes.txt"
CONFIG_FILE = "config.resolved.yaml"
BEST_CONFIG_FILE = "best_config.yaml"
SUMMARY_FILE = "study_summary.json"
SENSITIVITY_FILE = "sensitivity.json"
SENSITIVITY_CSV_FILE = "sensitivity.csv"
REPORT_FILE = "report.html"
PARETO_FILE = "pareto_front.json"  # MLflow artifact of the parent run
STUDY_DB_FILE = "study.db"
MLFLOW_DB_FILE = "mlflow.db"
MLFLOW_ARTIFACTS_DIR = "mlartifacts"
LOCK_FILE = ".autoquant.lock"
BEST_TRIAL_FILE = "best_trial.json"  # which trial the best-so-far outputs of the folder come from


def model_file(within_budget: bool) -> str:
    """The name the best trial's model is written under: :data:`MODEL_FILE` within the budget,
    :data:`OVER_BUDGET_MODEL_FILE` otherwise."""
    return MODEL_FILE if within_budget else OVER_BUDGET_MODEL_FILE


# --- trial keys: what a trial is, so that a resumed study never runs it twice --------------------
class TrialKey:
    """Keys of trials (the ``key`` user attribute): ``strategy:<name>``, ``sampled:<n>`` (the n-th
    sampled trial of the study; studies before workers used the trial number), ``bisect:<k>`` and
    ``scales``. A trial run again after its worker died keeps its key."""

    STRATEGY = "strategy:"
    SAMPLED = "sampled:"
    BISECT = "bisect:"
    SCALES = "scales"

    @staticmethod
    def strategy(name: str) -> str:
        return f"{TrialKey.STRATEGY}{name}"

    @staticmethod
    def sampled(number: int) -> str:
        return f"{TrialKey.SAMPLED}{number}"

    @staticmethod
    def bisect(k: int) -> str:
        return f"{TrialKey.BISECT}{k}"


# --- trial user attributes --------------------------------------------------------------------------
TRIAL_KEY = "key"
TRIAL_SCALES = "scales"  # the per-tensor scales a trial applies (the scale trial stores what it found)
TRIAL_FAIL_REASON = "fail_reason"

# --- study user attributes --------------------------------------------------------------------------
STUDY_FP32_SCORE = "fp32_score"
STUDY_SCALES_PROGRESS = "scales_progress"
STUDY_LATENCY_TOLERANCE = "latency_tolerance"
STUDY_FP32_LATENCY = "fp32_latency_ms"  # at the selection's thread count
STUDY_FP32_LATENCIES = "fp32_latency_by_threads"  # threads label -> FP32 ms
STUDY_FP32_LOAD = "fp32_load_average"  # the 1-minute load average when the FP32 latency was measured
STUDY_LATENCIES = "latency_by_structure"
STUDY_COMPUTE_LAYERS = "compute_layers"  # the model's quantizable Conv/ConvTranspose/Gemm/MatMul nodes
STUDY_MLFLOW_PARENT = "mlflow_parent_run_id"
STUDY_MLFLOW_CLAIM = "mlflow_parent_claim"  # the process creating the parent run (host, pid, at)
STUDY_STARTED = "started_at"  # epoch seconds when the study's first run began
STUDY_TIME_TO_BUDGET = "time_to_budget_s"  # from STUDY_STARTED to the first trial within budget
STUDY_FINGERPRINT = "fingerprint"  # hashes of the model, the data and the search settings
STUDY_RESOLUTION = "resolution"  # the smallest decay the test set resolves (evaluation.Resolution.to_dict)
STUDY_BISECT_PLAN = "bisect_plan"  # the choices and the k range of the FP32 blacklist bisection


# --- the commands that serve a study (stored in each process's worker record) ----------------------
class Command(StrEnum):
    """How a process serves a study: ``tune`` runs (or resumes) it, ``worker`` joins a study in a
    shared storage, ``serve`` hands its trials to remote clients. A str, as the records store it."""

    TUNE = "tune"
    WORKER = "worker"
    SERVE = "serve"


# --- system attributes (bookkeeping of the processes that share a study) ---------------------------
WORKER_PREFIX = "autoquant:worker:"  # study: one per process that serves the study
TRIAL_OWNER = "autoquant:owner"  # trial: the process that runs it (host, pid)
