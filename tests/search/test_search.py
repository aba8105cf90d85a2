"""The search on the digits example: spaces, fast and full modes, resume, failures, ask-and-tell."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import autoquant
from autoquant.config import QuantizationConfig, load_config
from autoquant.errors import ConfigError, SearchError
from autoquant.search import TrialOutcome, best_outcome, load_space, ranked, storage_url, study_name
from tests.helpers import FAILING_TOP1, ROOT, digits_study, digits_variant, top1

# ---------------------------------------------------------------- spaces


def test_builtin_spaces_load_from_the_package() -> None:
    fast, full = load_space("fast"), load_space("full")
    assert [s["name"] for s in fast.strategies][:3] == [
        "percentile_activations",
        "first_layer_fp32",
        "per_channel_mse",
    ]
    assert full.strategies == fast.strategies  # strategies_from: fast
    assert full.parameters["fp32_layers"].search == "bisect"
    assert full.parameters["ratio_range"].when == {"ratio_search": [True]}


def test_conditional_parameters_and_sets() -> None:
    full = load_space("full")
    base = QuantizationConfig()
    params = full.complete({"method": "kl", "ratio_search": True, "ratio_range": "wide"}, base)
    assert params["ratio_range"] == "wide" and "max_percentile" not in params
    q = full.apply(params, base)
    assert (q.start_ratio, q.end_ratio, q.step_ratio) == (0.3, 1.7, 0.01)
    params = full.complete({"method": "percentile", "max_percentile": 0.9999}, base)
    assert "bins" not in params and "ratio_search" not in params and params["max_percentile"] == 0.9999
    assert full.apply(params, base).method == "percentile"


def test_sampled_trials_respect_conditions() -> None:
    full = load_space("full")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(40):
        trial = study.ask()
        params = full.suggest(trial, QuantizationConfig(), nodes=23)
        assert "fp32_layers" not in params
        assert ("bins" in params) == (params["method"] in ("kl", "symkl", "jsd", "mse"))
        assert ("ratio_range" in params) == bool(params.get("ratio_search"))
        full.apply(params, QuantizationConfig())  # always a valid config
        study.tell(trial, 0.0)


def test_overrides_and_bad_space_files(tmp_path: Path) -> None:
    space = load_space("full", {"method": "mse", "bins": {"choices": [2048, 4096]}})
    assert space.parameters["method"].choices == ["mse"] and space.parameters["bins"].choices == [2048, 4096]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "parameters:\n  bins: {choices: [1024], when: {method: [kl]}}\n  method: {choices: [kl]}\n"
    )
    with pytest.raises(ConfigError, match="'when' may only name parameters declared before it"):
        load_space(bad)
    bad.write_text("parameters:\n  bogus_key: {choices: [1]}\n")
    with pytest.raises(ConfigError, match="not quantization keys"):
        load_space(bad)
    with pytest.raises(ConfigError, match="no built-in search space 'fastest'"):
        load_space("fastest")
    # A strategy's value must be one of its parameter's choices: refused as the space loads.
    bad.write_text(
        "parameters:\n  method: {choices: [kl, mse]}\nstrategies:\n  - {name: mm, method: minmax}\n"
    )
    with pytest.raises(ConfigError, match=r"bad.yaml: strategy 'mm': method: 'minmax' is not one of"):
        load_space(bad)
    # A value fixed by an override holds in every strategy (fast mode's set other methods).
    fixed = load_space("fast", {"method": "mse"})
    assert fixed.strategies and all(s["method"] == "mse" for s in fixed.strategies)


def test_selection_rule() -> None:
    def outcome(number: int, decay: float, nodes: int, latency: float, ok: bool) -> TrialOutcome:
        convs = tuple(f"conv{i}" for i in range(nodes))  # FP32 compute layers (see test_selection.py)
        return TrialOutcome(number, "k", {}, 0.9, decay, None, convs, latency, ok, fp32_compute=convs)

    a = outcome(0, 0.004, 1, 1.0, True)
    b = outcome(1, 0.001, 2, 0.5, True)  # smaller decay but more FP32 nodes
    c = outcome(2, 0.003, 1, 0.8, True)  # as few FP32 nodes as a, faster
    d = outcome(3, 0.0001, 0, 0.1, False)
    assert best_outcome([a, b, c, d]) is c
    assert best_outcome([outcome(4, 0.02, 0, 1, False), outcome(5, 0.01, 3, 1, False)]).number == 5
    # Latencies within the tolerance of the fastest are ties: the smaller decay wins them.
    fast, close, slow = (
        outcome(6, 0.004, 0, 0.200, True),
        outcome(7, 0.000, 0, 0.214, True),
        outcome(8, 0.0, 0, 0.3, True),
    )
    assert best_outcome([fast, close, slow]) is fast
    assert best_outcome([fast, close, slow], latency_tolerance=0.10) is close
    assert [o.number for o in ranked([slow, fast, close, a], latency_tolerance=0.10)] == [7, 6, 8, 0]


# ---------------------------------------------------------------- studies on the digits model


def _study_config(tmp_path: Path, search: dict, name: str = "study.yaml") -> Path:
    return digits_study(tmp_path, name, search=search)


def _load_study(config_path: Path) -> optuna.Study:
    config = load_config(config_path)
    return optuna.load_study(study_name=study_name(config), storage=storage_url(config))


@pytest.mark.integration
def test_fast_mode_stops_at_the_first_passing_strategy(
    digits_config: Path, tmp_path: Path, digits_test_data
) -> None:
    config = load_config(digits_config)
    result = autoquant.tune(config)
    # The first strategy (per-channel, 99.999th percentile, float activations) keeps 0.996 against
    # FP32's 0.994, within the 0.5-point budget: it ends the study.
    assert [o.key for o in result.trials] == ["strategy:percentile_activations"]
    assert result.best.key == "strategy:percentile_activations" and result.within_budget
    x, y = digits_test_data
    written = config.output.directory / "model.int8.onnx"
    assert config.search.accept_int8_decay >= 0.994 - top1(written, x, y) == pytest.approx(result.best.decay)
    summary = json.loads((config.output.directory / "study_summary.json").read_text())
    assert summary["best"]["number"] == result.best.number and summary["completed_trials"] == 1
    # From the study's start (before calibration) to the end of trial 0, the first within budget.
    trial = result.trials[0].timings
    parts = ("thresholds", "quantize", "session", "inference", "latency")
    assert (
        sum(trial[k] for k in parts)
        <= trial["trial"]
        < summary["time_to_budget_s"]
        == result.time_to_budget_s
    )
    # Every stage of this process's set-up is timed, and the first trial ends after the set-up.
    stages = summary["timings"]
    setup = ("prepare_s", "statistics_s", "fp32_reference_s", "latency_s")
    assert all(stages[k] > 0 for k in setup)
    # The small model's FP32 reference runs alongside the statistics pass (the longer one counts).
    alongside = max(stages["statistics_s"], stages["fp32_reference_s"])
    assert stages["prepare_s"] + alongside + stages["latency_s"] <= stages["setup_s"]
    # The latency tolerance only breaks ties: it is measured after the first trial.
    assert stages["tolerance_s"] > 0 and "latency_tolerance" in summary
    assert stages["setup_s"] + trial["trial"] <= stages["to_first_trial_s"] < 300
    again = autoquant.tune(config)  # resumes: nothing left to do
    assert len(again.trials) == 1 and again.time_to_budget_s == result.time_to_budget_s
    shown = subprocess.run(
        [sys.executable, "-m", "autoquant", "status", str(digits_config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        shown.returncode == 0
        and "strategy:percentile_activations" in shown.stdout
        and "1 completed and 0 failed" in shown.stdout
    )
    missing = subprocess.run(
        [sys.executable, "-m", "autoquant", "status", str(digits_config), "-o", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "run `autoquant tune` first" in missing.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.integration
def test_best_config_reproduces_the_model_bit_for_bit(digits_config: Path, tmp_path: Path) -> None:
    config = load_config(digits_config)
    autoquant.tune(config)
    out = config.output.directory
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoquant",
            "quantize",
            str(out / "best_config.yaml"),
            "-o",
            str(tmp_path / "re"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "re" / "model.int8.onnx").read_bytes() == (out / "model.int8.onnx").read_bytes()


TIGHT = {"mode": "full", "accept_int8_decay": 0.0, "n_trials": 2}


@pytest.mark.slow
def test_full_mode_meets_a_budget_plain_quantization_cannot(
    digits_config: Path, tmp_path: Path, digits_test_data
) -> None:
    (tmp_path / "kl_only.yaml").write_text(
        "parameters:\n  per_channel: {choices: [false, true]}\n  method: {choices: [kl]}\n"
        "  fp32_layers: {int: {low: 0, high: null}, search: bisect}\nstrategies:\n  - {name: default}\n"
    )
    config = load_config(_study_config(tmp_path, {**TIGHT, "space": tmp_path / "kl_only.yaml"}))
    result = autoquant.tune(config)
    plain = [o for o in result.trials if o.key in ("strategy:default",) or o.key.startswith("sampled:")]
    assert plain and all(not o.within_budget for o in plain)
    assert result.within_budget and result.best.key.startswith(("bisect:", "scales"))
    bisections = [o for o in result.trials if o.key.startswith("bisect:")]
    assert len(bisections) <= int(np.ceil(np.log2(23))) + 1
    x, y = digits_test_data  # independent check of the written model
    out = config.output.directory
    assert top1(out / "model.int8.onnx", x, y) >= 0.994
    assert (out / "fp32_nodes.txt").read_text().splitlines() == list(result.best.fp32_nodes)
    assert any(o.key == "scales" for o in result.trials)


def test_a_failing_trial_is_recorded_and_the_study_goes_on(
    digits_config: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "flaky.py").write_text(FAILING_TOP1)
    config = load_config(digits_study(tmp_path, test={"objective": f"{tmp_path / 'flaky.py'}:Top1"}))
    result = autoquant.tune(config)
    study = _load_study(tmp_path / "study.yaml")
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "metric server unreachable" in study.trials[0].user_attrs["fail_reason"]
    assert result.failed == 1 and result.best.key == "strategy:first_layer_fp32"
    tracebacks = [r for r in caplog.records if "failed in user code" in r.getMessage()]
    assert len(tracebacks) == 1 and "flaky.py" in tracebacks[0].getMessage()


def _session_failing_for_trial(monkeypatch: pytest.MonkeyPatch, failing: set[int], where: str) -> None:
    """Make onnxruntime fail in the trials numbered ``failing``: at session creation or at run."""
    from autoquant.search import _trial as search

    real = search.session_for
    calls = iter(range(1000))  # session_for is called once per trial, in trial order

    def session_for(model, options=None):
        number = next(calls)
        if number in failing and where == "session":
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed:\nbad QDQ pair")
        session = real(model, options)
        if number in failing:

            def run(*args, **kwargs):
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : kernel failed")

            session.run = run
        return session

    monkeypatch.setattr(search, "session_for", session_for)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("session", "creating an onnxruntime session for the quantized model failed (RuntimeError: "),
        ("run", "onnxruntime cannot run the model on test samples"),
    ],
)
def test_an_onnxruntime_failure_fails_only_its_trial(
    digits_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
    reason: str,
) -> None:
    _session_failing_for_trial(monkeypatch, {0}, where)
    caplog.set_level("DEBUG", logger="autoquant.search._driver")
    result = autoquant.tune(load_config(digits_config))
    study = _load_study(digits_config)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    fail_reason = study.trials[0].user_attrs["fail_reason"]
    assert reason in fail_reason and "RuntimeError: [ONNXRuntimeError]" in fail_reason
    assert "\n" not in fail_reason
    assert result.failed == 1 and result.best.key == "strategy:first_layer_fp32"
    failures = [r for r in caplog.records if r.getMessage() == "trial 0 failed"]
    assert len(failures) == 1 and isinstance(failures[0].exc_info[1].__cause__, RuntimeError)


def test_a_study_without_any_completed_trial_names_the_last_failure(
    digits_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _session_failing_for_trial(monkeypatch, set(range(1000)), "session")
    with pytest.raises(
        SearchError,
        match=r"no trial of study .* completed \(6 failed\); the last failure: "
        r"creating an onnxruntime session",
    ):
        autoquant.tune(load_config(digits_config))


SLOW_FULL = {"mode": "full", "accept_int8_decay": 0.0, "n_trials": 6}


@pytest.mark.integration
def test_ctrl_c_stops_cleanly_with_the_best_so_far(digits_config: Path, tmp_path: Path) -> None:
    config_path = _study_config(tmp_path, SLOW_FULL)
    process = subprocess.Popen(
        [sys.executable, "-m", "autoquant", "tune", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_completed(config_path, process, 2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert "interrupted; the best model so far is in" in stderr
    out = tmp_path / "out"
    assert (out / "model.int8.onnx").is_file() and (out / "study_summary.json").is_file()


def _wait_for_completed(config_path: Path, process: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 240
    completed = 0
    while completed < count and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            completed = len(_load_study(config_path).get_trials(states=(TrialState.COMPLETE,)))
        except Exception:  # the study does not exist yet
            completed = 0
    assert process.poll() is None, "the study finished before it could be stopped"


@pytest.mark.slow
def test_killed_study_resumes_without_repeating_work(digits_config: Path, tmp_path: Path) -> None:
    config_path = _study_config(tmp_path, SLOW_FULL)
    command = [sys.executable, "-m", "autoquant", "tune", str(config_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_completed(config_path, process, 4)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(_load_study(config_path).trials)
    assert (tmp_path / "out" / "model.int8.onnx").is_file()  # the best so far is on disk
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    study = _load_study(config_path)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: stopped early as over budget
    keys = [t.user_attrs["key"] for t in study.trials if t.state in finished]
    assert len(keys) == len(set(keys))  # every finished trial once
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) <= 1  # at most the killed trial
    assert len(study.trials) == len(keys) + len(failed)
    assert len(keys) >= killed_at - 1


def test_ask_and_tell_in_the_users_code(digits_config: Path, digits_test_data) -> None:
    x, y = digits_test_data
    tuner = autoquant.Tuner(load_config(digits_config))
    seen = []
    for trial in tuner:
        predictions = np.concatenate([trial.run(x[i : i + 100])[0].argmax(1) for i in range(0, 500, 100)])
        trial.report(float((predictions == y).mean()))
        seen.append((trial.fp32, trial.score))
    assert seen[0] == (True, pytest.approx(0.994))
    result = tuner.result()
    assert result.fp32_score == pytest.approx(0.994) and result.within_budget
    assert [o.key for o in result.trials] == ["strategy:percentile_activations"]


def test_an_ask_and_tell_study_resumes_without_rerunning_what_finished(
    tmp_path: Path, digits_test_data
) -> None:
    """The ask-and-tell loop runs the same driver as ``tune``: a loop left after two INT8 trials
    and started again goes on with the third strategy; neither the FP32 trial nor a finished
    strategy is handed out again, and the outputs are written as ``tune`` writes them. The space is
    the built-in fast space with its strategies before bench/strategies.py re-chose them: the first
    built-in one is within budget on digits, these first three are not (the fourth is)."""
    x, y = digits_test_data
    order = ["default", "per_channel", "mse", "depthwise_per_channel", "first_layer_fp32", "percentile"]
    space = tmp_path / "resume.yaml"
    space.write_text(
        (ROOT / "search_spaces" / "fast.yaml").read_text().split("\nstrategies:\n")[0]
        + "\nstrategies:\n  - {name: default}\n  - {name: per_channel, per_channel: true}\n"
        "  - {name: mse, method: mse}\n  - {name: depthwise_per_channel, method: mse, depthwise_per_channel: true}\n"
        "  - {name: first_layer_fp32, method: mse, per_channel: true, first_layer_fp32: true}\n"
        "  - {name: percentile, method: percentile, max_percentile: 0.99999, per_channel: true}\n"
    )
    config = digits_variant(tmp_path, search={"accept_int8_decay": 0.0, "space": space})

    def top1_of(trial) -> float:
        return float((trial.run(x)[0].argmax(1) == y).mean())

    first = []
    for trial in autoquant.Tuner(config):
        trial.report(top1_of(trial))
        first.append(trial.number)
        if len(first) == 3:  # the FP32 trial and two strategies
            break
    second = autoquant.Tuner(config)
    handed = []
    for trial in second:
        assert not trial.fp32
        trial.report(top1_of(trial))
        handed.append(trial.number)
    assert first == [-1, 0, 1] and handed[0] == 2 and handed == sorted(handed)
    keys = [o.key for o in second.result().trials]
    assert keys == [f"strategy:{s}" for s in order[: 2 + len(handed)]]  # each once, in order
    assert (config.output.directory / "model.int8.onnx").is_file()
    assert (config.output.directory / "study_summary.json").is_file()


def test_timeout_ends_the_study_between_trials(digits_config: Path, tmp_path: Path) -> None:
    config = load_config(_study_config(tmp_path, {"mode": "full", "accept_int8_decay": 0.0, "timeout": 0.01}))
    with _captured("autoquant.search._open") as logged:
        result = autoquant.tune(config)
    # The deadline passes before the first trial, which still runs (a study never ends with nothing).
    assert len(result.trials) == 1 and (config.output.directory / "study_summary.json").is_file()
    # Said at the start, in one line, with the estimate: full mode wants its 6 strategies and
    # 12 sampled trials, and none fits once the set-up has taken longer than the timeout.
    warning = [r.getMessage() for r in logged if "search.timeout" in r.getMessage()]
    assert len(warning) == 1 and "\n" not in warning[0]
    assert "is short for this model: the set-up took" in warning[0] and "so 0 of the 18 trials" in warning[0]


@contextlib.contextmanager
def _captured(name: str):
    """The records logged by ``name`` at WARNING and above while the block runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@pytest.mark.slow
def test_identical_and_resumed_full_studies_agree(tmp_path: Path) -> None:
    """Two identical full-mode studies, and a third stopped after 8 trials and resumed, sample the
    same trials and choose the same best (latency noise is a tie, see search.ranked)."""
    studies = []
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        folder.mkdir()
        config = digits_variant(folder, search={"mode": "full", "n_trials": 6})
        if name == "c":
            autoquant.tune(config, stop=lambda: len(_trials(config)) >= 8)  # noqa: B023
            assert len(_trials(config)) == 8
        studies.append(autoquant.tune(config))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)  # a sampled trial may be certainly over budget
    sampled = [
        {t.number: t.params for t in _trials(r, finished) if t.user_attrs["key"].startswith("sampled:")}
        for r in studies
    ]
    assert sampled[0] == sampled[1] == sampled[2] and len(sampled[0]) == 6
    assert len({(r.best.number, r.best.key) for r in studies}) == 1, [
        (r.best.number, r.best.key) for r in studies
    ]


def _trials(source, states: tuple[TrialState, ...] = (TrialState.COMPLETE,)) -> list:
    """The trials of a study in ``states`` (completed), from its config or its result."""
    from autoquant.search import storage_url, study_name

    if isinstance(source, autoquant.StudyConfig):
        url, name = storage_url(source), study_name(source)
    else:
        url, name = source.storage, source.study_name
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return []
    return study.get_trials(states=states)


def test_a_trial_certainly_over_budget_is_pruned_and_not_rerun(tmp_path: Path) -> None:
    """Once a trial has completed, a trial whose decay is certainly over the budget stops early and
    is stored as pruned with its partial score; a resumed study does not run it again."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "parameters:\n  method: {choices: [mse, percentile]}\n"
        "  max_percentile: {choices: [0.5], when: {method: [percentile]}}\n"
        "strategies:\n  - {name: mse, method: mse}\n  - {name: clipped, method: percentile, max_percentile: 0.5}\n"
    )
    config = digits_variant(
        tmp_path, search={"mode": "full", "accept_int8_decay": 0.0, "space": space, "n_trials": 1}
    )
    result = autoquant.tune(config)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    clipped = next(t for t in study.trials if t.user_attrs.get("key") == "strategy:clipped")
    assert clipped.state == TrialState.PRUNED
    assert clipped.user_attrs["samples"] < 500 and clipped.user_attrs["decay"] > 0.05
    assert "strategy:clipped" not in [o.key for o in result.trials]
    count = len(study.trials)
    autoquant.tune(config)
    assert len(optuna.load_study(study_name=result.study_name, storage=result.storage).trials) == count


def test_outcome_attribute_names_stay_as_stored_studies_have_them() -> None:
    """A stored study resumes only while the trials' user-attribute names stay the same."""
    from autoquant.search._outcome import OutcomeAttr

    outcome = TrialOutcome(1, "strategy:a", {}, 0.9, 0.01, None, (), 1.0, True)
    assert list(outcome.attrs()) == [
        "key", "score", "decay", "decay_ci", "fp32_nodes", "fp32_compute_layers",
        "fp32_wrapped_layers",  # added later: a trial stored without it counted the QDQ wrapping
        "float_nodes", "latency_ms", "latency_by_threads", "speedup_by_threads", "within_budget", "timings", "layer_scales",
        "load_average",  # added later: a trial stored without it reads as None ("load n/a")
        "decay_bound",  # added later: a trial stored without it reads as None (no search.budget_confidence)
    ]  # fmt: skip
    assert OutcomeAttr.within_budget == "within_budget" and OutcomeAttr.samples == "samples"
