"""Per-layer sensitivity on the digits model, the report files, and the report in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from autoquant.engine import Sensitivity, compute_thresholds, difference, quantize_model
from autoquant.search import pipeline, render_report, sensitivity_csv
from tests.helpers import CHROMIUM_FLAGS


@pytest.fixture(scope="module")
def analysed(calibrated_digits):
    config, calibrated = calibrated_digits
    return config, calibrated, pipeline.analyze_layers(config, calibrated)


def test_difference_metrics_by_hand() -> None:
    ref = [np.array([[3.0, 4.0], [1.0, 0.0]])]
    out = [np.array([[3.0, 4.0], [0.0, 1.0]])]
    d = difference(ref, out)
    # signal 9+16+1 = 26, noise 0 + (1 + 1) = 2 -> 10*log10(13); cosines 1 and 0; L2 per sample 0 and 2.
    assert d.snr_db == pytest.approx(10 * np.log10(13))
    assert d.cosine == pytest.approx(0.5) and d.l2 == pytest.approx(1.0)
    assert difference(ref, ref).snr_db == float("inf")


def test_every_quantizable_node_is_ranked_with_real_names(analysed) -> None:
    config, calibrated, sensitivity = analysed
    assert sorted(sensitivity.ranking()) == sorted(n.name for n in calibrated.graph.nodes)
    assert sensitivity.samples == config.search.data_limit == 8
    snrs = [x.isolated.snr_db for x in sensitivity.layers]
    assert snrs == sorted(snrs)
    # Every node's own output is compared, except the Relus that uint8 activations fold away.
    assert all(x.cumulative is not None for x in sensitivity.layers if x.op_type != "Relu")
    assert Sensitivity.from_json(sensitivity.to_json()) == sensitivity


def _logit_snr(model, x: np.ndarray, reference: np.ndarray) -> float:
    logits = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    return 10 * np.log10((reference**2).sum() / ((reference - logits) ** 2).sum())


def test_top_ranked_layer_hurts_more_than_lower_ranked_ones_on_the_whole_test_set(
    analysed, digits_test_data
) -> None:
    config, calibrated, sensitivity = analysed
    x, _ = digits_test_data  # 500 samples; the ranking saw only the first 8
    reference = ort.InferenceSession(str(calibrated.graph.prepared_path)).run(None, {"input": x})[0]
    ranges = compute_thresholds(calibrated.stats, config.quantization)
    finite = [x.node for x in sensitivity.layers if np.isfinite(x.isolated.snr_db)]
    top, middle, bottom = finite[0], finite[len(finite) // 2], finite[-1]
    snr = {
        name: _logit_snr(
            quantize_model(calibrated.graph, ranges, config.quantization, only=[name]).model, x, reference
        )
        for name in (top, middle, bottom)
    }
    assert snr[top] < snr[middle] < snr[bottom]


def test_report_files(analysed, tmp_path: Path) -> None:
    _, _, sensitivity = analysed
    rows = sensitivity_csv(sensitivity).splitlines()
    assert rows[0].startswith("rank,node,op_type,snr_db") and len(rows) == len(sensitivity.layers) + 1
    assert rows[1].split(",")[1] == sensitivity.layers[0].node
    html = render_report(sensitivity, "digits", {"model": "model.onnx"})
    assert "<svg" in html and "<script" not in html and "http" not in html.replace("http://www.w3.org", "")
    assert html.count("<rect") == len(sensitivity.layers)


@pytest.mark.integration
def test_report_renders_in_headless_chromium(analysed, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    _, _, sensitivity = analysed
    page = tmp_path / "report.html"
    page.write_text(render_report(sensitivity, "digits sensitivity", {"model": "model.onnx"}))
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page compresses to a few KB


def test_a_ranking_is_cached_for_resumed_studies_and_other_workers(
    calibrated_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoquant.search import _ranking
    from autoquant.search._outputs import write_sensitivity

    config, calibrated = calibrated_digits
    config = config.replace(
        calibration={"cache_dir": tmp_path / "cache"}, output={"directory": tmp_path / "out"}
    )
    runs: list[bool] = []
    analyze_layers = pipeline.analyze_layers

    def counting(cfg, cal, progress=None):
        runs.append(cfg.quantization.per_channel)
        return analyze_layers(cfg, cal, progress)

    monkeypatch.setattr(pipeline, "analyze_layers", counting)
    first = _ranking.analyse(config, calibrated, config.quantization)
    again = _ranking.analyse(config, calibrated, config.quantization.model_copy(update={"fp32_layers": 3}))
    assert again.ranking() == first.ranking() and runs == [False]  # a blacklist does not change the ranking
    other = config.quantization.model_copy(update={"per_channel": True})
    _ranking.analyse(config, calibrated, other)
    assert runs == [False, True] and len(list((tmp_path / "cache").glob("sensitivity-*.json"))) == 2
    assert not (tmp_path / "out").exists()  # the output folder is the outputs stage's
    write_sensitivity(config, first, "a")
    assert (tmp_path / "out" / "sensitivity.json").is_file() and (tmp_path / "out" / "report.html").is_file()


def test_the_analysis_stops_at_the_deadline(calibrated_digits, tmp_path: Path) -> None:
    """A study's deadline is polled after each layer: a long analysis ends the search, and leaves
    no ranking in the cache nor in the output folder."""
    from autoquant.errors import SearchStopped
    from autoquant.search import _ranking

    config, calibrated = calibrated_digits
    config = config.replace(
        calibration={"cache_dir": tmp_path / "cache"}, output={"directory": tmp_path / "out"}
    )
    polls: list[int] = []

    def late() -> bool:
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(SearchStopped):
        _ranking.analyse(config, calibrated, config.quantization, late)
    assert len(polls) == 3 < len(calibrated.graph.nodes)
    assert not list((tmp_path / "cache").glob("sensitivity-*.json")) and not (tmp_path / "out").exists()


def test_the_bisection_asks_the_driver_for_a_ranking_it_lacks(calibrated_digits) -> None:
    """Planning the bisection needs a sensitivity ranking: without one in this process, the plan is
    an Analyse step for the driver to run (outside the study lock); with it, the plan itself."""
    from types import SimpleNamespace

    from autoquant.search import load_space
    from autoquant.search._outcome import TrialOutcome
    from autoquant.search._phases import Analyse, bisect_plan
    from autoquant.search._trial import ProcessCaches, ranking_key

    config, calibrated = calibrated_digits
    nodes = tuple(n.name for n in calibrated.graph.nodes)
    inputs = SimpleNamespace(config=config, space=load_space("full"), calibrated=calibrated, nodes=len(nodes))
    ctx = SimpleNamespace(inputs=inputs, caches=ProcessCaches())
    best = TrialOutcome(0, "strategy:a", {}, 0.9, 0.001, None, nodes, 1.0, True, fp32_compute=nodes)
    step = bisect_plan(ctx, [best], 0.0)  # type: ignore[arg-type]
    assert isinstance(step, Analyse) and step.quantization.fp32_layers == 0
    ctx.caches.rankings[ranking_key(step.quantization)] = list(nodes)
    plan = bisect_plan(ctx, [best], 0.0)  # type: ignore[arg-type]
    assert isinstance(plan, dict) and not isinstance(plan, Analyse)
