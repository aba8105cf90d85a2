"""Creating and joining a stored study: the sampler, and the fingerprint that every process serving
the study must share.

The fingerprint (:data:`~autoquant.names.STUDY_FINGERPRINT`) has two parts. ``inputs`` hashes the
model, the calibration and test data by content (not by path: machines may mount them elsewhere),
and the evaluation, quantization and search settings; a process whose inputs differ is refused
before its statistics pass. ``results`` hashes the statistics and the FP32 reference outputs it
computed: they must be identical, which a shared ``calibration.cache_dir`` guarantees and a
deterministic pass gives on machines whose onnxruntime computes alike.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from autoquant.config import CalibrationConfig, QuantizationConfig, StudyConfig
from autoquant.engine.graph import ModelGraph
from autoquant.errors import StorageError
from autoquant.names import STUDY_FINGERPRINT, TRIAL_KEY, TrialKey
from autoquant.search import pipeline
from autoquant.search._space import SearchSpace
from autoquant.storage import StudyStorage, display_url

logger = logging.getLogger(__name__)

#: What each fingerprint entry covers, for the refusal message.
_WHAT = {
    "model": "model (model.path)",
    "calibration": "calibration data (calibration.source, its preprocessing or calib_iterations)",
    "test": "test data or evaluation settings (test.*, model.outputs, search.decay, search.fp32_score)",
    "quantization": "quantization settings (quantization.*)",
    "search": "search settings (search.mode, accept_int8_decay, seed, space, overrides, data_limit, ...)",
    "statistics": "FP32 statistics (computed on another machine? share calibration.cache_dir)",
    "reference": "FP32 reference outputs (computed on another machine? share calibration.cache_dir)",
}


class ResumableTPESampler(optuna.samplers.TPESampler):
    """Seeded TPE whose random state before each trial depends only on the seed, the number of
    trials completed so far and the number of sampled trials in flight in other processes, not on
    what this process sampled before: a resumed study samples the same sequence as one that was
    never interrupted (a killed trial, failed, takes no part), and processes that sample while
    others' sampled trials run draw from other seeds."""

    def __init__(self, seed: int, **options: object) -> None:
        super().__init__(seed=seed, **options)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        completed = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        sampled = [t for t in trials if str(t.user_attrs.get(TRIAL_KEY, "")).startswith(TrialKey.SAMPLED)]
        keys = {t.user_attrs[TRIAL_KEY] for t in sampled}
        settled = {t.user_attrs[TRIAL_KEY] for t in sampled if t.state.is_finished()}
        in_flight = len(keys - settled)  # 0 in one process: the seed is that of a sequential study
        seed = (self._base_seed * 1_000_003 + completed + 7_919 * in_flight) % 2**32
        self._rng.rng.seed(seed)  # optuna's LazyRandomState of TPE and of its start-up sampler
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def sampler(seed: int) -> ResumableTPESampler:
    """The study's sampler: multivariate TPE over groups; the constant liar keeps processes that
    sample while others run from sampling the same region."""
    with warnings.catch_warnings():  # multivariate, group and constant_liar are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return ResumableTPESampler(
            seed, multivariate=True, group=True, n_startup_trials=5, constant_liar=True
        )


def _hash(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:20]


def _file_hash(path: Any) -> str:
    if path is None:
        return ""
    try:
        return hashlib.sha256(open(path, "rb").read()).hexdigest()[:20]
    except OSError:
        return "unreadable"


#: Search settings outside the "search" hash (timing, naming, or hashed with the test settings).
_SEARCH_UNHASHED = frozenset({"timeout", "study_name", "space", "decay", "fp32_score", "n_trials"})


def _unset(section: Any, *keys: str) -> set[str]:
    """The ``keys`` of ``section`` left at None: a key added later leaves older studies' hashes
    alone at its default (tests/search/test_resume_previous_version.py)."""
    return {k for k in keys if getattr(section, k) is None}


def fingerprint_inputs(config: StudyConfig, graph: ModelGraph, space: SearchSpace) -> dict[str, str]:
    """Hashes of the model, the data by content and the settings that decide a trial's score."""
    calib, test, search = config.calibration, config.test, config.search
    return {
        "model": graph.model_hash[:20],
        "calibration": _hash(
            pipeline.data_fingerprint(calib, with_source=False),
            calib.calib_iterations,
            calib.histogram_bins,
            *_changed(calib, _ADDED_CALIBRATION_KEYS),
        ),
        "test": _hash(
            pipeline.data_fingerprint(test, with_source=False) if test.source else "",
            _file_hash(test.labels),
            # allow_nonfinite is in data_fingerprint when set; a key added to a section must leave
            # the stored fingerprints of older studies alone (tests/search/test_resume_previous_version.py)
            test.model_dump_json(exclude={"source", "labels", "batch_size", "allow_nonfinite"}),
            config.model.outputs,
            search.decay,
            search.fp32_score,
        ),
        # keys added later are left out at their default, so that older studies keep their fingerprint
        "quantization": _hash(
            config.quantization.model_dump_json(exclude=_at_default(config.quantization, _ADDED_KEYS))
        ),
        "search": _hash(
            search.model_dump_json(exclude=_SEARCH_UNHASHED | _unset(search, "budget_confidence")),
            space.model_dump_json(
                exclude={"source": True, "parameters": dict.fromkeys(_ADDED_PARAMETERS, True)}
            ),
        ),
    }


#: Quantization keys and search-space parameters added after the first release, left out of the
#: fingerprint at their default so that the studies of earlier versions resume
#: (tests/search/test_resume_previous_version.py). A parameter of the built-in spaces is the same
#: in every process of one version; search.overrides of it are in the search settings.
#: Quantization keys added after studies were stored: hashed only when they are not at their default.
_ADDED_KEYS = {key: QuantizationConfig.model_fields[key].default for key in ("bias_correction", "equalize")}
_ADDED_PARAMETERS = ("bias_correction",)
_ADDED_CALIBRATION_KEYS = {
    "bias_correction_samples": CalibrationConfig.model_fields["bias_correction_samples"].default
}


def _at_default(section: object, added: dict[str, object]) -> set[str]:
    return {k for k, default in added.items() if getattr(section, k) == default}


def _changed(section: object, added: dict[str, object]) -> list[str]:
    """``key=value`` of the added keys not at their default (none: the hash is the older one)."""
    return [f"{k}={getattr(section, k)!r}" for k in added if k not in _at_default(section, added)]


def fingerprint_results(calibrated: pipeline.Calibrated, scorer: object) -> dict[str, str]:
    """Hashes of the statistics and of the FP32 reference outputs (when the scorer has them)."""
    digest = hashlib.sha256()
    for name in sorted(calibrated.stats.tensors):
        t = calibrated.stats.tensors[name]
        digest.update(f"{name}|{t.minimum!r}|{t.maximum!r}|{t.range!r}|{t.count}|".encode())
        digest.update(t.histogram.tobytes())
    found = {"statistics": digest.hexdigest()[:20]}
    reference = getattr(scorer, "reference", None)
    if callable(reference):
        ref = hashlib.sha256()
        for array in reference():  # by slices: a stored reference is never read whole
            for start in range(0, len(array), 64):
                ref.update(np.ascontiguousarray(array[start : start + 64]).tobytes())
        found["reference"] = ref.hexdigest()[:20]
    return found


def check_fingerprint(
    stored: dict | None, mine: dict[str, str], study: str, url: str, fresh_hint: bool = False
) -> None:
    """Refuse to serve a study stored with another fingerprint.

    Raises:
        StorageError: A fingerprint entry differs (the first is named).
    """
    if not stored:
        return
    for part, value in mine.items():
        if part in stored and stored[part] != value:
            raise StorageError(
                f"study {study!r} in {display_url(url)} was started with another {_WHAT[part]}; "
                "every process that serves a study must use the same model, data and search settings: "
                "run it with the study's config, choose another search.study_name"
                + (", or start over with --fresh" if fresh_hint else "")
            )


def load_existing(storage: StudyStorage, name: str) -> optuna.Study | None:
    """The stored study named ``name``, or None."""
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage.backend)}:
        return None
    return optuna.load_study(study_name=name, storage=storage.backend, sampler=None)


def open_study(
    config: StudyConfig,
    storage: StudyStorage,
    name: str,
    fresh: bool,
    fingerprint: dict[str, str],
    fresh_hint: bool = False,
) -> optuna.Study:
    """Create or join the study under the study lock: a fresh start deletes a stored study of the
    same name first; a stored fingerprint must match, a missing one is stored.

    Raises:
        StorageError: The stored study was started with another fingerprint.
    """
    with storage.lock(name):
        if fresh and load_existing(storage, name) is not None:
            optuna.delete_study(study_name=name, storage=storage.backend)
            logger.info("deleted the stored study %r (--fresh)", name)
        study = optuna.create_study(
            storage=storage.backend,
            study_name=name,
            direction="minimize",
            sampler=sampler(config.search.seed),
            load_if_exists=True,
        )
        stored = study.user_attrs.get(STUDY_FINGERPRINT)
        check_fingerprint(stored, fingerprint, name, storage.url, fresh_hint)
        if stored != {**(stored or {}), **fingerprint}:
            study.set_user_attr(STUDY_FINGERPRINT, {**(stored or {}), **fingerprint})
        return study
