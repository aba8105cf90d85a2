"""The objective registry, create_objective, user objectives and a conformance test over every built-in."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

import autoquant.objectives.example_user_objective as example
from autoquant.data._labels import Box
from autoquant.errors import ConfigError, DataError
from autoquant.objectives import (
    Agreement,
    Top1,
    create_objective,
    needs_labels,
    needs_reference,
    objective_name,
    register_objective,
    registered_objectives,
    supports_resampling,
)

SSD = "autoquant.objectives.ssd_decode:decode"
EXAMPLE = Path(example.__file__)
USER_CODE = """
import numpy as np

class Counter:
    def __init__(self):
        self.seen = 0

    def update(self, outputs, labels, reference):
        self.seen += len(outputs[0])

    def score(self):
        return float(self.seen)

def make_counter():
    return Counter()

class NoScore:
    def update(self, outputs, labels, reference):
        pass

def broken():
    raise RuntimeError("boom")

NOT_CALLABLE = 3
"""


def classification_batch(size: int = 8) -> tuple[list[np.ndarray], list, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(size, 10)).astype(np.float32)
    return [logits], [int(label) for label in rng.integers(0, 10, size)], [logits + 0.01]


def detection_batch() -> tuple[list[np.ndarray], list, None]:
    rows = np.zeros((2, 3, 7), dtype=np.float32)
    rows[:, 0] = [0, 1, 0.9, 0.1, 0.1, 0.5, 0.5]
    return [rows], [[Box(1, 0.1, 0.1, 0.5, 0.5)], [Box(2, 0.2, 0.2, 0.6, 0.6)]], None


# A plausible batch and the score range of every registered objective: register one, add it here.
CONFORMANCE = {
    "top1": (classification_batch, None, (0.0, 1.0)),
    "top5": (classification_batch, None, (0.0, 1.0)),
    "agreement": (classification_batch, None, (0.0, 1.0)),
    "cosine": (classification_batch, None, (-1.0, 1.0)),
    "map": (detection_batch, SSD, (0.0, 1.0)),
}


@pytest.mark.parametrize("name", registered_objectives())
def test_conformance(name: str) -> None:
    assert name in CONFORMANCE, f"add a plausible batch for the new objective {name!r} to CONFORMANCE"
    make_batch, decode, (low, high) = CONFORMANCE[name]
    objective = create_objective(name, has_labels=True, decode=decode)
    assert objective.name == objective_name(objective) == name
    assert isinstance(objective.needs_labels, bool) and isinstance(objective.needs_reference, bool)
    assert supports_resampling(objective)
    with pytest.raises(DataError, match=name):
        objective.score()
    outputs, labels, reference = make_batch()
    objective.update(outputs, labels if objective.needs_labels else None, reference)
    objective.update(outputs, labels, reference)  # extra inputs are fine
    score = objective.score()
    assert isinstance(score, float) and low <= score <= high
    assert objective.score(np.arange(2 * len(labels))) == score
    assert low <= objective.score(np.zeros(3, dtype=int)) <= high
    assert create_objective(name, has_labels=True, decode=decode) is not objective  # fresh each time


def test_auto_objective() -> None:
    assert isinstance(create_objective("auto", has_labels=True), Top1)
    assert isinstance(create_objective("auto", has_labels=False), Agreement)


def test_unknown_objective_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="unknown objective 'top3'; registered: .*top1.*top5.*map"):
        create_objective("top3", has_labels=True)


def test_labels_required() -> None:
    with pytest.raises(ConfigError, match="'top1' needs labels .*set test.labels"):
        create_objective("top1", has_labels=False)


def test_map_needs_decode() -> None:
    with pytest.raises(ConfigError, match="set test.decode"):
        create_objective("map", has_labels=True)
    with pytest.raises(ConfigError, match="test.decode: 'no_such_module_xyz:decode': cannot import"):
        create_objective("map", has_labels=True, decode="no_such_module_xyz:decode")


def test_unused_decode_is_an_error() -> None:
    with pytest.raises(ConfigError, match="test.decode is set .* 'top1' does not use it"):
        create_objective("auto", has_labels=True, decode=SSD)


def test_register_objective_refuses_duplicates_and_reserved_names() -> None:
    with pytest.raises(ValueError, match="already registered as 'top1'"):
        register_objective("top1")(type("Other", (), {}))
    with pytest.raises(ValueError, match="reserved"):
        register_objective("mine:score")(type("Other", (), {}))
    assert "mine:score" not in registered_objectives()


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_objective.py"
    path.write_text(USER_CODE)
    return path


def test_user_objective_from_a_file(user_file: Path) -> None:
    objective = create_objective(f"{user_file}:make_counter", has_labels=False)
    objective.update([np.zeros((3, 2))], None, None)
    assert objective.score() == 3.0
    assert not needs_labels(objective) and not needs_reference(objective)
    assert objective_name(objective) == "Counter"
    assert not supports_resampling(objective)  # its score() takes no indices
    again = create_objective(f"{user_file}:Counter", has_labels=True)  # a class works too
    assert type(again).__module__ == type(objective).__module__  # the file is imported once


def test_user_objective_from_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "objective_module_xyz.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    objective = create_objective("objective_module_xyz:Counter", has_labels=True)
    objective.update([np.zeros((2, 1))], [0, 1], None)
    assert objective.score() == 2.0


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("NoScore", "returned a NoScore without score\\(\\)"),
        ("broken", "calling it with no arguments failed \\(RuntimeError: boom\\)"),
        ("NOT_CALLABLE", "NOT_CALLABLE is a int, expected a function or class"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_invalid_user_objective(user_file: Path, function: str, message: str) -> None:
    spec = f"{user_file}:{function}"
    with pytest.raises(ConfigError, match=f"test.objective: '{spec}'.*{message}"):
        create_objective(spec, has_labels=True)


def test_user_objective_import_failures(tmp_path: Path) -> None:
    bad = tmp_path / "bad_syntax.py"
    bad.write_text("def oops(:\n")
    with pytest.raises(ConfigError, match=f"'{bad}:oops': cannot import .*SyntaxError"):
        create_objective(f"{bad}:oops", has_labels=True)
    with pytest.raises(ConfigError, match="no such file"):
        create_objective(f"{tmp_path / 'absent.py'}:make", has_labels=True)
    with pytest.raises(ConfigError, match="ModuleNotFoundError"):
        create_objective("no_such_module_xyz:make", has_labels=True)
    with pytest.raises(ConfigError, match="must be module:function"):
        create_objective("mymodule:", has_labels=True)


def test_user_objective_score_must_run_without_arguments(tmp_path: Path) -> None:
    path = tmp_path / "needs_args.py"
    path.write_text(
        "class Odd:\n    def update(self, o, l, r): pass\n    def score(self, a, b): return 0.0\n"
    )
    with pytest.raises(ConfigError, match="score\\(\\) must be callable without arguments"):
        create_objective(f"{path}:Odd", has_labels=True)


def test_user_objective_needing_labels(tmp_path: Path) -> None:
    path = tmp_path / "labelled.py"
    path.write_text(
        "class L:\n    needs_labels = True\n    def update(self, o, l, r): pass\n"
        "    def score(self, indices=None): return 0.0\n"
    )
    with pytest.raises(ConfigError, match="needs labels"):
        create_objective(f"{path}:L", has_labels=False)
    assert supports_resampling(create_objective(f"{path}:L", has_labels=True))


def test_example_user_objective() -> None:
    # Per-sample MAE: batch 1 gives 0.25 and 0.5, batch 2 (exact) gives 0 and 0.
    objective = create_objective(f"{EXAMPLE}:make_objective", has_labels=False)
    assert needs_reference(objective) and objective_name(objective) == "mae"
    fp32 = [np.array([[1.0, 2.0], [0.0, 4.0]])]
    objective.update([np.array([[1.0, 2.5], [0.5, 4.5]])], None, fp32)
    objective.update(fp32, None, fp32)
    assert objective.score() == pytest.approx(1 / (1 + 0.1875))  # mean MAE (0.75 / 4)
    assert objective.score(np.array([0, 1, 1])) == pytest.approx(1 / (1 + 1.25 / 3))
    assert supports_resampling(objective)
    with pytest.raises(DataError, match="reference"):
        objective.update(fp32, None, None)
    with pytest.raises(DataError, match="does not match"):
        objective.update(fp32, None, [np.zeros((2, 3))])
    with pytest.raises(DataError, match="no samples"):
        example.make_objective().score()
    module_objective = create_objective(
        "autoquant.objectives.example_user_objective:make_objective", has_labels=True
    )
    assert objective_name(module_objective) == "mae"


def test_example_user_objective_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "score = 0.8421" in capsys.readouterr().out
