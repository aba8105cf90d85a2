"""Streaming histogram statistics: exactness, batch independence, degenerate data, cache files."""

from __future__ import annotations

import numpy as np
import pytest

from autoquant.engine import _statistics as statistics
from autoquant.engine._statistics import (
    HistogramCollector,
    Statistics,
    collect_statistics,
    load_statistics,
    save_statistics,
)
from autoquant.errors import CalibrationError


def _reference_histogram(x: np.ndarray, bins: int) -> tuple[float, np.ndarray]:
    """Histogram over [-R, R) with R the smallest power of two above max|x|, built in one go."""
    x = x[np.isfinite(x)].astype(np.float64)
    peak = np.abs(x).max()
    r = 1.0
    while r <= peak:
        r *= 2
    while r / 2 > peak:
        r /= 2
    edges = np.linspace(-r, r, 2 * bins + 1)
    return r, np.histogram(x, bins=edges)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_histogram_equals_one_shot_histogram(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Batches with growing magnitudes force several range doublings.
    batches = [rng.normal(scale=s, size=997).astype(np.float32) for s in (0.01, 0.5, 3.0, 40.0, 2.0)]
    collector = HistogramCollector("t", bins=1024)
    for batch in batches:
        collector.update(batch)
    stats = collector.result()
    r, expected = _reference_histogram(np.concatenate(batches), 1024)
    assert stats.range == r
    np.testing.assert_array_equal(stats.histogram, expected)
    assert stats.count == sum(b.size for b in batches)


def test_batch_size_and_order_do_not_change_the_statistics() -> None:
    rng = np.random.default_rng(7)
    data = rng.laplace(size=(64, 3, 5, 5)).astype(np.float32) * np.linspace(0.1, 9, 64)[:, None, None, None]
    results = []
    for batch in (1, 8, 64):
        collector = HistogramCollector("t", bins=8192)
        for start in range(0, 64, batch):
            collector.update(data[start : start + batch])
        results.append(collector.result())
    reversed_collector = HistogramCollector("t", bins=8192)
    for sample in data[::-1]:
        reversed_collector.update(sample)
    results.append(reversed_collector.result())
    for other in results[1:]:
        np.testing.assert_array_equal(other.histogram, results[0].histogram)
        assert (other.range, other.minimum, other.maximum) == (
            results[0].range,
            results[0].minimum,
            results[0].maximum,
        )


def test_sides_and_magnitude() -> None:
    collector = HistogramCollector("t", bins=4)
    collector.update(np.array([0.0, 0.1, 0.6, -0.1, -0.6, -0.9], dtype=np.float32))
    s = collector.result()
    assert s.range == 1.0
    # positive bins of width 0.25: [0, .25): 0.0, 0.1; [.5, .75): 0.6
    np.testing.assert_array_equal(s.positive, [2, 0, 1, 0])
    # negative magnitudes: 0.1 -> bin 0, 0.6 -> bin 2, 0.9 -> bin 3
    np.testing.assert_array_equal(s.negative, [1, 0, 1, 1])
    np.testing.assert_array_equal(s.magnitude, [3, 0, 2, 1])
    assert (s.minimum, s.maximum) == (np.float32(-0.9), np.float32(0.6))


def test_nan_inf_and_zero_values_are_counted_apart() -> None:
    collector = HistogramCollector("t", bins=8)
    collector.update(np.array([np.nan, np.inf, -np.inf, 0.0, 0.0], dtype=np.float32))
    s = collector.result()
    assert (s.nan_count, s.inf_count, s.count) == (1, 2, 2)
    assert s.range == 0.0 and s.histogram.sum() == 2
    collector.update(np.array([3.0], dtype=np.float32))
    s = collector.result()
    assert s.range == 4.0 and s.histogram.sum() == 3 and s.maximum == 3.0


def test_bins_must_be_a_power_of_two() -> None:
    with pytest.raises(CalibrationError, match="power of two"):
        HistogramCollector("t", bins=1000)


def test_statistics_file_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(3)
    tensors = {}
    for name in ("a", "onnx::Conv_90", "/blocks/0/Relu_output_0"):
        c = HistogramCollector(name, bins=1024)
        c.update(rng.normal(size=100).astype(np.float32))
        tensors[name] = c.result()
    path = tmp_path / "stats.npz"
    save_statistics(Statistics(key="k", tensors=tensors, samples=100), path)
    loaded = load_statistics(path, "k")
    assert loaded.from_cache and loaded.samples == 100 and list(loaded.tensors) == list(tensors)
    for name, s in tensors.items():
        np.testing.assert_array_equal(loaded.tensors[name].histogram, s.histogram)
        assert loaded.tensors[name].minimum == s.minimum and loaded.tensors[name].range == s.range
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]  # no temporary file left


def _random_statistics(count: int, bins: int = 1024) -> Statistics:
    rng = np.random.default_rng(4)
    tensors = {}
    for i in range(count):
        c = HistogramCollector(f"t{i}", bins=bins)
        c.update(rng.normal(size=50).astype(np.float32))
        tensors[c.name] = c.result()
    return Statistics(key="k", tensors=tensors, samples=50)


def test_loading_reads_each_cache_array_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Indexing the lazy NpzFile per tensor re-read the whole histogram array for every tensor:
    # 722 tensors (95 MB) took 57 s. Every member must be read once, whatever the tensor count.
    path = tmp_path / "stats.npz"
    save_statistics(_random_statistics(40), path)
    reads: dict[str, int] = {}
    original = np.lib.npyio.NpzFile.__getitem__

    def counting(self, key):
        reads[key] = reads.get(key, 0) + 1
        return original(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", counting)
    loaded = load_statistics(path, "k")
    assert len(loaded.tensors) == 40
    assert reads and set(reads.values()) == {1}, reads


def test_cache_holds_no_pickles(tmp_path) -> None:
    path = tmp_path / "stats.npz"
    save_statistics(_random_statistics(3), path)
    with np.load(path, allow_pickle=False) as data:
        assert data["names"].dtype.kind == "U" and data["names"].tolist() == ["t0", "t1", "t2"]


def test_unreadable_cache_is_collected_again(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "stats-k.npz").write_bytes(b"not a zip file")
    passes = []

    def fake_pass(model, tensors, batches, bins, progress, memory_budget, model_dir):
        passes.append(tensors)
        return _random_statistics(1).tensors, 50

    monkeypatch.setattr(statistics, "run_statistics_pass", fake_pass)
    stats = collect_statistics(lambda: None, ["t0"], lambda: [], "k", tmp_path, bins=1024)
    assert passes == [["t0"]] and not stats.from_cache
    assert "ignoring the unreadable statistics cache" in caplog.text
    assert load_statistics(tmp_path / "stats-k.npz", "k").tensors.keys() == {"t0"}  # rewritten
