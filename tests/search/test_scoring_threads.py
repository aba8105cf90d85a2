"""How trials are scored: a batch-1 test set on one thread when the FP32 model ran faster on one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autoquant.engine.graph import set_session_threads
from autoquant.evaluation import ThreadLabel
from autoquant.search._trial import scoring_options


def _ctx(one_ms: float, default_ms: float, batch_size: int) -> SimpleNamespace:
    latency = {ThreadLabel.ONE.value: one_ms, ThreadLabel.DEFAULT.value: default_ms}
    config = SimpleNamespace(test=SimpleNamespace(batch_size=batch_size))
    return SimpleNamespace(inputs=SimpleNamespace(fp32_latency=latency, config=config))


@pytest.fixture(autouse=True)
def _default_threads():
    set_session_threads(None)
    yield
    set_session_threads(None)


def test_a_model_faster_on_one_thread_is_scored_on_one() -> None:
    options = scoring_options(_ctx(one_ms=7.8, default_ms=9.5, batch_size=1))
    assert options is not None and options.intra_op_num_threads == 1


def test_a_model_faster_on_all_cores_keeps_the_default() -> None:
    assert scoring_options(_ctx(one_ms=30.0, default_ms=17.0, batch_size=1)) is None


def test_larger_batches_keep_the_default() -> None:
    # The timings are of batch 1; a batch of 50 shares its work between cores.
    assert scoring_options(_ctx(one_ms=0.04, default_ms=0.06, batch_size=50)) is None


def test_threads_set_by_the_user_win() -> None:
    set_session_threads(2)
    assert scoring_options(_ctx(one_ms=7.8, default_ms=9.5, batch_size=1)) is None
