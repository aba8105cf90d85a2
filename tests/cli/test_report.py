"""The study's ``report.html`` in a real browser (Playwright driving Debian's Chromium), after a real
study through the CLI with a failed, a pruned and trials within the budget: every section says what
it should, every trial is in the table, and a click on a column's header sorts it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import run_process
from tests.helpers import CHROMIUM_FLAGS, FAILING_TOP1, digits_study

pytestmark = pytest.mark.integration  # the study runs in a process, and so does the browser

CHROMIUM = Path("/usr/bin/chromium")

# max (fails: FAILING_TOP1), mse (within the budget), a percentile clipped at the median
# (certainly over the budget once mse has completed: pruned)
SPACE = (
    "parameters:\n  method: {choices: [max, mse, percentile]}\n"
    "  max_percentile: {choices: [0.5], when: {method: [percentile]}}\n"
    "strategies:\n  - {name: max, method: max}\n  - {name: mse, method: mse}\n"
    "  - {name: clipped, method: percentile, max_percentile: 0.5}\n"
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A real study through the CLI: a failed trial, a pruned one, trials within the budget."""
    folder = tmp_path_factory.mktemp("report")
    (folder / "flaky.py").write_text(FAILING_TOP1)
    (folder / "space.yaml").write_text(SPACE)
    search = {"mode": "full", "accept_int8_decay": 0.02, "space": folder / "space.yaml", "n_trials": 1}
    config = digits_study(folder, search=search, test={"objective": f"{folder / 'flaky.py'}:Top1"})
    result = run_process("tune", str(config))
    assert result.returncode == 0, result.stderr
    return folder / "out", result


@pytest.fixture(scope="module")
def page(study: tuple[Path, subprocess.CompletedProcess]) -> Iterator:
    """The report open in Chromium (headless, no network needed)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs it)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.route("http*://**", lambda route: route.abort())  # the page must need nothing from outside
        tab.goto((study[0] / "report.html").as_uri())
        yield tab
        browser.close()


def _stored_trials(out: Path) -> list:
    import optuna

    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}").trials


def test_the_study_has_failed_pruned_and_within_budget_trials(
    study: tuple[Path, subprocess.CompletedProcess],
) -> None:
    from optuna.trial import TrialState

    states = [t.state for t in _stored_trials(study[0])]
    assert {TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE} <= set(states), states
    assert json.loads((study[0] / "best_trial.json").read_text())["within_budget"] is True


def test_the_result_and_the_reason_name_the_best_trial(study, page) -> None:
    out = study[0]
    best = json.loads((out / "best_trial.json").read_text())  # the outputs' own record
    stored = {t.number: t for t in _stored_trials(out)}[best["trial"]]
    fp32 = json.loads((out / "study_summary.json").read_text())["fp32_score"]
    result = page.locator("#result-table").inner_text()
    assert f"{fp32:.4f}" in result, result
    assert f"#{best['trial']} ({best['key']})" in result and "within budget" in result, result
    assert f"{stored.user_attrs['score']:.4f}" in result and f"{stored.user_attrs['decay']:+.4f}" in result
    low, high = stored.user_attrs["decay_ci"]
    assert f"{low:+.4f} .. {high:+.4f}" in result, result
    reason = page.locator("#reason").inner_text()
    assert (
        "fewest compute layers left in FP32" in reason
        and f"trial {best['trial']} ({best['key']})" in reason.lower()
    )
    assert "within the budget" in reason and "Pareto front" in reason, reason


def test_every_trial_is_in_the_table_with_its_state(study, page) -> None:
    from optuna.trial import TrialState

    rows = page.locator("#trials-table tbody tr")
    shown = {int(rows.nth(i).get_attribute("data-trial")): rows.nth(i) for i in range(rows.count())}
    trials = _stored_trials(study[0])
    assert sorted(shown) == [t.number for t in trials]
    names = {TrialState.FAIL: "failed", TrialState.PRUNED: "pruned"}
    for t in trials:
        cells = shown[t.number].locator("td").all_inner_texts()
        assert cells[0] == str(t.number) and cells[1] == t.user_attrs["key"], cells
        if t.state in names:
            assert cells[2] == names[t.state], cells
        else:
            assert (
                cells[2] in ("best", "best, over budget", "within budget", "over budget")
                and cells[4] == f"{t.user_attrs['decay']:+.4f}"
            )
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert "metric server unreachable" in shown[failed.number].inner_text()


def test_the_chart_has_labelled_axes_a_legend_and_the_best_trial(study, page) -> None:
    chart = page.locator("#pareto ~ .chart svg")
    texts = chart.locator("text").all_text_contents()
    assert any(t.startswith("latency at 1 thread, ms") for t in texts), texts
    assert any(t.startswith("decay") for t in texts), texts
    best = json.loads((study[0] / "best_trial.json").read_text())["trial"]
    assert any(t.startswith(f"#{best} (") and t.endswith("best") for t in texts), texts
    legend = page.locator("#legend").inner_text()
    assert "compute layers left in FP32" in legend and "the best trial" in legend, legend
    assert chart.bounding_box()["width"] > 300


def test_the_output_files_and_the_rebuild_command(study, page, tmp_path: Path) -> None:
    out = study[0]
    listed = page.locator("#files-table td code").all_inner_texts()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(listed)
    command = shlex.split(page.locator("#rebuild").inner_text())
    assert command[:2] == ["autoquant", "quantize"] and command[2] == str(out / "best_config.yaml")
    rebuilt = run_process(*command[1:-1], str(tmp_path / "rebuilt"))  # the command, into tmp_path
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "rebuilt" / "model.int8.onnx").read_bytes() == (out / "model.int8.onnx").read_bytes()


def test_the_settings_are_the_config_as_run(study, page) -> None:
    settings = page.locator("#settings-table").inner_text()
    for line in ("search.accept_int8_decay\t0.02", "search.mode\tfull", "calibration.calib_iterations\t200"):
        assert line in settings, settings


def test_a_click_on_a_header_sorts_the_rows(page, tmp_path: Path) -> None:
    def column(index: int) -> list[str]:
        return page.locator(f"#trials-table tbody tr td:nth-child({index})").all_inner_texts()

    header = page.locator("#trials-table thead th", has_text="decay").first
    header.click()
    decays = [float(v) for v in column(5) if v != "n/a"]
    assert decays == sorted(decays) and column(5)[: len(decays)] == [f"{v:+.4f}" for v in decays]
    header.click()
    again = [float(v) for v in column(5) if v != "n/a"]
    assert again == sorted(decays, reverse=True)
    trial = page.locator("#trials-table thead th", has_text="trial").first
    trial.focus()
    page.keyboard.press("Enter")  # by keyboard too
    numbers = [int(v) for v in column(1)]
    assert numbers == sorted(numbers) and header.get_attribute("aria-sort") is None
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
