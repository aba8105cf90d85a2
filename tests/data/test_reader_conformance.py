"""One conformance test for every registered data reader (as scikit-learn's ``check_estimator``).

A reader registered with ``register_reader`` must: claim a source written in its format (and be
the only reader to claim it, so that ``format: auto`` finds it), report its sample count, yield
samples that match the model inputs in shape and dtype, batch them, and honour ``limit``. A new
reader adds the writer of a small fixture to ``WRITERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from autoquant.config import DataConfig
from autoquant.data import InputSpec, LmdbWriter, detect_format, open_reader
from autoquant.registry import DATA_READERS

SPEC = [InputSpec("input", (None, 1, 8, 8), np.dtype(np.float32))]
COUNT = 5


def _arrays() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(COUNT, 1, 8, 8)).astype(np.uint8)


def _write_numpy(folder: Path) -> tuple[str, dict[str, Any]]:
    np.save(folder / "calib.npy", _arrays().astype(np.float32))
    return str(folder / "calib.npy"), {}


def _write_images(folder: Path) -> tuple[str, dict[str, Any]]:
    for index, image in enumerate(_arrays()):
        cv2.imwrite(str(folder / f"{index:02d}.png"), image[0])
    return str(folder), {"data_preprocess_str": "gray=True;scale=0.0625"}


def _write_lmdb(folder: Path) -> tuple[str, dict[str, Any]]:
    with LmdbWriter(folder / "db") as writer:
        arrays = _arrays().astype(np.float32)
        writer.put(arrays[:2])
        for array in arrays[2:]:
            writer.put(array)
    return str(folder / "db"), {}


def _write_callable(folder: Path) -> tuple[str, dict[str, Any]]:
    np.save(folder / "arrays.npy", _arrays().astype(np.float32))
    (folder / "aq_conformance_source.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        f"    arrays = np.load({str(folder / 'arrays.npy')!r})\n"
        "    yield arrays[:2], [0, 1]\n"
        "    yield from ((array, 2) for array in arrays[2:])\n"
    )
    return f"{folder / 'aq_conformance_source.py'}:samples", {}


#: Registered reader name -> writer of a fixture of ``COUNT`` samples matching ``SPEC``.
WRITERS: dict[str, Callable[[Path], tuple[str, dict[str, Any]]]] = {
    "numpy": _write_numpy,
    "images": _write_images,
    "lmdb": _write_lmdb,
    "callable": _write_callable,
}


@pytest.mark.parametrize("name", DATA_READERS.names())
def test_reader_conforms(name: str, tmp_path: Path) -> None:
    assert name in WRITERS, f"reader {name!r} has no fixture: add a writer to WRITERS in {__file__}"
    source, values = WRITERS[name](tmp_path)
    reader_class = DATA_READERS.get(name)
    assert reader_class.claims(source), f"{name} does not claim its own source"
    assert detect_format(source) == name
    assert reader_class.expects, f"{name}: say what the reader expects (for the message when none claims)"

    config = DataConfig.model_validate({"source": source, **values})
    reader = open_reader(config, SPEC)
    assert type(reader) is reader_class
    assert len(reader) == COUNT
    samples = list(reader)
    assert len(samples) == COUNT
    for sample in samples:
        assert set(sample.inputs) == {"input"}
        assert sample.inputs["input"].shape == (1, 8, 8)
        assert sample.inputs["input"].dtype == np.float32
        assert sample.sample_id
    again = [sample.inputs["input"] for sample in open_reader(config, SPEC)]
    assert all(np.array_equal(a, s.inputs["input"]) for a, s in zip(again, samples, strict=True))

    batches = list(reader.batches(2))
    assert [len(b.sample_ids) for b in batches] == [2, 2, 1]
    assert batches[0].inputs["input"].shape == (2, 1, 8, 8)

    limited = open_reader(config, SPEC, limit=3)
    assert len(limited) == 3 and len(list(limited)) == 3


@pytest.mark.parametrize("name", DATA_READERS.names())
def test_reader_claims_no_missing_or_foreign_source(name: str, tmp_path: Path) -> None:
    reader_class = DATA_READERS.get(name)
    assert not reader_class.claims(str(tmp_path / "missing.npy"))
    (tmp_path / "table.csv").write_text("1,2\n")
    assert not reader_class.claims(str(tmp_path / "table.csv"))
