"""The search: the space of quantization choices, the phases (fast strategies, sampled trials,
blacklist bisection, layer scales), the one trial driver, selection of the best trial, the study
and the ask-and-tell API.
"""

from autoquant.search import pipeline
from autoquant.search._ask_tell import HandingScorer, Trial, Tuner
from autoquant.search._driver import Driver
from autoquant.search._naming import serving, storage_url, study_name
from autoquant.search._open import OpenSearch, open_search
from autoquant.search._outcome import EndState, TrialEnd, TrialOutcome, current_best, decay_text, outcomes
from autoquant.search._phases import Analyse, Done, Phase, Run, Wait
from autoquant.search._report import render_report, sensitivity_csv
from autoquant.search._resolution import budget_rule, meets_budget
from autoquant.search._selection import best_outcome, pareto_front, ranked
from autoquant.search._sharing import (
    check_fingerprint,
    fingerprint_inputs,
    fingerprint_results,
    load_existing,
    open_study,
)
from autoquant.search._space import SearchSpace, Value, load_space
from autoquant.search._study import drive, tune
from autoquant.search._study_report import render_study_report
from autoquant.search._summary import StudySummary, TuneResult, stored_result, stored_status, summary
from autoquant.search._trial import (
    DEFAULT_SAMPLED_TRIALS,
    SCALE_CANDIDATES,
    Candidate,
    NullReporter,
    Observers,
    ProcessCaches,
    Pruned,
    Reporter,
    Scorer,
    SearchContext,
    SearchInputs,
    log_trial,
    run_choice,
)
from autoquant.search.pipeline import Calibrated, quantize

__all__ = [
    "DEFAULT_SAMPLED_TRIALS",
    "SCALE_CANDIDATES",
    "Analyse",
    "Calibrated",
    "Candidate",
    "Done",
    "Driver",
    "EndState",
    "HandingScorer",
    "NullReporter",
    "Observers",
    "OpenSearch",
    "Phase",
    "ProcessCaches",
    "Pruned",
    "Reporter",
    "Run",
    "Scorer",
    "SearchContext",
    "SearchInputs",
    "SearchSpace",
    "StudySummary",
    "Trial",
    "TrialEnd",
    "TrialOutcome",
    "TuneResult",
    "Tuner",
    "Value",
    "Wait",
    "best_outcome",
    "budget_rule",
    "check_fingerprint",
    "current_best",
    "decay_text",
    "drive",
    "fingerprint_inputs",
    "fingerprint_results",
    "load_existing",
    "load_space",
    "log_trial",
    "meets_budget",
    "open_search",
    "open_study",
    "outcomes",
    "pareto_front",
    "pipeline",
    "quantize",
    "ranked",
    "render_report",
    "render_study_report",
    "run_choice",
    "sensitivity_csv",
    "serving",
    "storage_url",
    "stored_result",
    "stored_status",
    "study_name",
    "summary",
    "tune",
]
