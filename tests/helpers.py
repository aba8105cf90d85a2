"""Shared test helpers: the committed digits example, the onnx wheel's model zoo, config variants
built through the config API, and an independent top-1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

from autoquant.config import StudyConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
DIGITS_CONFIG = ROOT / "configs" / "digits.yaml"
ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def zoo_models() -> list[Path]:
    """The light model-zoo architectures in the onnx wheel."""
    return sorted(ZOO.glob("light_*.onnx"))


def write_config(tmp_path: Path, body: str, name: str = "study.yaml") -> Path:
    """Write a config file into tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(body)
    return path


def digits_variant(tmp_path: Path, **sections: Any) -> StudyConfig:
    """configs/digits.yaml writing into ``tmp_path / "out"`` with tracking off, and ``sections``
    (``search={"mode": "full"}``, ...) updating it key by key through the config API."""
    base = load_config(DIGITS_CONFIG).replace(
        output={"directory": tmp_path / "out"}, tracking={"enabled": False}
    )
    return base.replace(**sections) if sections else base


def digits_study(tmp_path: Path, name: str = "study.yaml", **sections: Any) -> Path:
    """:func:`digits_variant` written as a YAML file in tmp_path (for the command line)."""
    path = tmp_path / name
    path.write_text(digits_variant(tmp_path, **sections).to_yaml())
    return path


def small_digits_study(path: Path, *layers: dict[str, dict[str, Any]]) -> Path:
    """The digits example at 40 calibration samples (batches of 20) and 100 test samples (batches of
    50), written as YAML to ``path``; each of ``layers`` updates the sections it names, in order."""
    config: dict[str, dict[str, Any]] = {
        "model": {"path": str(DIGITS / "model.onnx")},
        "calibration": {
            "source": str(DIGITS / "data" / "calib.npy"),
            "calib_iterations": 40,
            "batch_size": 20,
        },
        "test": {
            "source": str(DIGITS / "data" / "test.npy"),
            "labels": str(DIGITS / "data" / "test_labels.txt"),
            "test_iterations": 100,
            "batch_size": 50,
        },
    }
    for layer in layers:
        for name, values in layer.items():
            config[name] = {**config.get(name, {}), **values}
    path.write_text(yaml.safe_dump(config))
    return path


def top1(model: onnx.ModelProto | str | Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a model over (x, y), computed with onnxruntime."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((logits.argmax(axis=1) == y).mean())


#: Debian Chromium's flags for a headless run on a closed network (no background connections).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# A user objective (top-1) whose third instance fails: the probe and the FP32 score take the first
# two, so the first trial fails and the study goes on; it scores resampled indices, so trials can
# be pruned and have a decay interval.
FAILING_TOP1 = """
import numpy as np
calls = 0

class Top1:
    def __init__(self):
        global calls
        calls += 1
        self.fail = calls == 3
        self.hits = []
    def update(self, outputs, labels, reference):
        if self.fail:
            raise RuntimeError("metric server unreachable")
        self.hits.extend(np.argmax(outputs[0], axis=1) == np.asarray(labels))
    def score(self, indices=None):
        hits = np.asarray(self.hits, dtype=float)
        return float(np.mean(hits if indices is None else hits[indices]))
"""
