"""Shared fixtures: the committed digits example and the model-zoo architectures shipped with onnx."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
DIGITS_CONFIG = ROOT / "configs" / "digits.yaml"
ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the suite (and the CLI it starts) out of the real user cache and the user's MLflow server."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


def zoo_models() -> list[Path]:
    """The light model-zoo architectures in the onnx wheel."""
    return sorted(ZOO.glob("light_*.onnx"))


@pytest.fixture()
def digits_config(tmp_path: Path) -> Path:
    """A copy of configs/digits.yaml that writes into tmp_path (data paths stay on the committed files)."""
    text = DIGITS_CONFIG.read_text()
    text = text.replace("../examples/digits", str(DIGITS)).replace("../runs/digits", str(tmp_path / "out"))
    path = tmp_path / "digits.yaml"
    path.write_text(text)
    return path


def write_config(tmp_path: Path, body: str, name: str = "study.yaml") -> Path:
    """Write a config file into tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.fixture(scope="session")
def digits_test_data() -> tuple[np.ndarray, np.ndarray]:
    """The committed digits test images and labels."""
    return np.load(DIGITS / "data" / "test.npy"), np.loadtxt(
        DIGITS / "data" / "test_labels.txt", dtype=np.int64
    )


def top1(model: onnx.ModelProto | str | Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a model over (x, y), computed with onnxruntime."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((logits.argmax(axis=1) == y).mean())


@pytest.fixture()
def digits_copy(tmp_path: Path) -> Path:
    """The digits example folder copied into tmp_path."""
    target = tmp_path / "digits"
    shutil.copytree(DIGITS, target)
    return target
