"""Fixtures shared by the suite; helpers live in tests/helpers.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import DIGITS, DIGITS_CONFIG, digits_study


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the suite (and the CLI it starts) out of the real user cache and the user's MLflow server."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(autouse=True)
def _units_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked ``integration`` (or ``slow``) may start no process: no CLI, no server, no
    MLflow process, no PostgreSQL. So ``pytest -m "not slow and not integration"`` stays a fast
    unit subset, and a test that starts one without the mark fails here, naming the mark."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("slow"):
        return

    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"a unit test started a process ({args!r}); mark it @pytest.mark.integration")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


@pytest.fixture()
def digits_config(tmp_path: Path) -> Path:
    """configs/digits.yaml as a file writing into tmp_path/out, tracking off (tests/helpers.py)."""
    return digits_study(tmp_path, "digits.yaml")


@pytest.fixture(scope="session")
def calibrated_digits(tmp_path_factory: pytest.TempPathFactory):
    """The digits config and its prepared model and statistics, calibrated once for the session."""
    from autoquant.config import load_config
    from autoquant.search import pipeline

    config = load_config(DIGITS_CONFIG).replace(
        output={"directory": tmp_path_factory.mktemp("out")}, tracking={"enabled": False}
    )
    return config, pipeline.calibrate(config)


@pytest.fixture(scope="session")
def digits_test_data() -> tuple[np.ndarray, np.ndarray]:
    """The committed digits test images and labels."""
    return np.load(DIGITS / "data" / "test.npy"), np.loadtxt(
        DIGITS / "data" / "test_labels.txt", dtype=np.int64
    )


@pytest.fixture()
def digits_copy(tmp_path: Path) -> Path:
    """The digits example folder copied into tmp_path."""
    target = tmp_path / "digits"
    shutil.copytree(DIGITS, target)
    return target
