"""The statistics pass within a memory budget: the plan's sizes are the real ones, its groups and
sub-batches hold the budget, and the statistics are the same whatever the plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from autoquant.engine import _statistics as statistics
from autoquant.engine import bytes_per_sample, plan_pass
from autoquant.engine._statistics import run_statistics_pass
from autoquant.engine.graph import prepare_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_vit.onnx"


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory):
    return prepare_model(FIXTURE, tmp_path_factory.mktemp("cache"))


def _feeds(count: int, batch: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(size=(batch, 1, 32, 32)).astype(np.float32)} for _ in range(count)]


def test_estimated_sizes_are_what_onnxruntime_returns(graph) -> None:
    model = graph.load()
    tensors = [t for t in graph.activations if t != "input"]
    estimated = bytes_per_sample(model, tensors, _feeds(1, 4)[0])
    session = statistics._augmented_session(model, tensors)
    returned = session.run(tensors, _feeds(1, 1)[0])
    assert len(returned) == len(tensors) > 20
    for name, value in zip(tensors, returned, strict=True):
        assert estimated[name] == value.nbytes, name


def test_plan_uses_as_few_passes_as_the_budget_allows() -> None:
    sizes = {f"t{i}": 1000 for i in range(10)}  # 10 kB a sample
    whole = plan_pass(sizes, budget=10**6, batch=8)
    assert (whole.passes, whole.samples_per_run, whole.overlap) == (1, 0, True)  # 2 x 80 kB fit
    sub = plan_pass(sizes, budget=45_000, batch=8)
    assert (sub.passes, sub.samples_per_run, sub.overlap) == (1, 2, True)  # 2 runs x 2 samples x 10 kB
    single = plan_pass(sizes, budget=15_000, batch=8)
    assert (single.passes, single.samples_per_run, single.overlap) == (1, 1, False)
    grouped = plan_pass(sizes, budget=3_500, batch=8)
    assert grouped.passes == 4 and grouped.samples_per_run == 1 and not grouped.overlap
    assert [len(g) for g in grouped.groups] == [3, 3, 3, 1]
    assert [t for g in grouped.groups for t in g] == list(sizes)  # every tensor once, in order
    fixed = plan_pass(sizes, budget=45_000, batch=8, splittable=False)
    assert fixed.samples_per_run == 0 and fixed.passes == 2  # a fixed batch of 8 is never split


def test_unknown_sizes_count_as_the_largest_known() -> None:
    plan = plan_pass({"a": 100, "b": None, "c": 300}, budget=700, batch=1)
    assert plan.bytes_per_sample == 700 and plan.passes == 1


class _Watched:
    """A session that records the bytes each run returns."""

    def __init__(self, session: ort.InferenceSession, runs: list[int]) -> None:
        self.session, self.runs = session, runs

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feed):
        results = self.session.run(names, feed)
        self.runs.append(sum(r.nbytes for r in results))
        return results


@pytest.mark.parametrize("share", [0.2, 0.6, 1.5, 2.5, 1000.0])
def test_statistics_are_the_same_whatever_the_budget(
    graph, share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``share``: the budget as a multiple of one sample's activations (below 1: tensor groups,
    one pass each; 1.5: one sample a run; 2.5: two samples a run, overlapped; 1000: whole batches).

    onnxruntime's kernels may round differently at another batch size, so the reference pass runs
    the same samples per run, with no budget to speak of."""
    feeds = _feeds(3, 5)
    model = graph.load()
    produced = [t for t in graph.activations if t != "input"]
    per_sample = sum(bytes_per_sample(model, produced, feeds[0]).values())
    budget = int(share * per_sample)
    plan = plan_pass(bytes_per_sample(model, produced, feeds[0]), budget, 5)
    step = plan.samples_per_run or 5
    split = [{"input": f["input"][i : i + step]} for f in feeds for i in range(0, 5, step)]
    reference, samples = run_statistics_pass(model, list(graph.activations), split, 1024)
    runs: list[int] = []
    made = statistics._augmented_session
    monkeypatch.setattr(statistics, "_augmented_session", lambda m, t, d=None: _Watched(made(m, t, d), runs))
    tensors, counted = run_statistics_pass(model, list(graph.activations), feeds, 1024, memory_budget=budget)
    assert counted == samples == 15
    for name, expected in reference.items():
        got = tensors[name]
        assert (got.minimum, got.maximum, got.range, got.count) == (
            expected.minimum,
            expected.maximum,
            expected.range,
            expected.count,
        ), name
        np.testing.assert_array_equal(got.histogram, expected.histogram, err_msg=name)
    assert len(runs) == plan.passes * len(split)
    if share < 1:
        assert plan.passes > 1
    alive = max(runs) * (2 if plan.overlap else 1)
    assert alive <= budget or share == 1000.0
