"""Data readers on real files: sklearn digits as .npy/.npz/PNG/LMDB, the sklearn JPEG, callables."""

from __future__ import annotations

import importlib.resources
import logging
import sys
from pathlib import Path
from typing import Any

import cv2
import lmdb
import numpy as np
import pytest
from sklearn.datasets import load_digits

import autoquant.config as study_config
from autoquant.config import CalibrationConfig, DataConfig
from autoquant.data import (
    Box,
    DataReader,
    InputSpec,
    LmdbWriter,
    count_nonfinite,
    open_reader,
    read_labels,
    register_reader,
    registered_readers,
)
from autoquant.errors import ConfigError, DataError
from autoquant.usercode import load_callable

JPEG = Path(str(importlib.resources.files("sklearn.datasets.images") / "china.jpg"))
SPEC = [InputSpec("input", (None, 1, 8, 8), np.dtype(np.float32))]
N = 7


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.images[:N, None].astype(np.float32), data.target[:N].astype(int)


def config(source: Path | str, **values: Any) -> DataConfig:
    return DataConfig.model_validate({"source": str(source), **values})


def read(source: Path | str, inputs: list[InputSpec] = SPEC, limit: int = 0, **values: Any) -> list:
    return list(open_reader(config(source, **values), inputs, limit=limit))


def write_labels(path: Path, labels: Any) -> Path:
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return path


def assert_samples(samples: list, arrays: np.ndarray, labels: Any = None) -> None:
    assert len(samples) == len(arrays)
    for sample, array in zip(samples, arrays, strict=True):
        assert sample.inputs["input"].dtype == np.float32
        np.testing.assert_array_equal(sample.inputs["input"], array)
    assert [s.label for s in samples] == (list(labels) if labels is not None else [None] * len(arrays))


# --- numpy -----------------------------------------------------------------------------------------


def test_npy_stack_cast_to_input_dtype(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    np.save(tmp_path / "calib.npy", images.astype(np.float64))
    reader = open_reader(config(tmp_path / "calib.npy"), SPEC)
    assert len(reader) == N
    samples = list(reader)
    assert_samples(samples, images)
    assert samples[2].sample_id == f"{tmp_path / 'calib.npy'}[2]"


def test_a_cast_that_changes_the_meaning_of_the_data_is_refused(
    tmp_path: Path, digits: tuple, caplog
) -> None:
    images, _ = digits
    np.save(tmp_path / "ints.npy", (images * 255).astype(np.int64))
    with pytest.raises(
        DataError, match=r"ints.npy\[0\]: input 'input' is int64 data, the model expects float32"
    ):
        read(tmp_path / "ints.npy")
    np.save(tmp_path / "bytes.npy", (images * 255).astype(np.uint8))  # exact: uint8 fits float32
    caplog.set_level("INFO", logger="autoquant.data")
    assert len(read(tmp_path / "bytes.npy")) == N
    assert caplog.text.count("casting input 'input' from uint8 to float32") == 1


def test_npz_labels_key_and_config_labels_take_precedence(tmp_path: Path, digits: tuple) -> None:
    images, targets = digits
    np.savez(tmp_path / "calib.npz", input=images, labels=targets)
    assert_samples(read(tmp_path / "calib.npz"), images, targets)
    other = write_labels(tmp_path / "labels.txt", range(N))
    assert_samples(read(tmp_path / "calib.npz", labels=str(other)), images, range(N))


def test_npy_npz_folder_of_samples_and_stacks_in_name_order(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    np.save(tmp_path / "a.npy", images[0])  # one sample
    np.save(tmp_path / "b.npy", images[1:4])  # a stack
    np.savez(tmp_path / "c.npz", whatever=images[4:])  # any one name for a single-input model
    (tmp_path / "notes.md").write_text("ignored")
    samples = read(tmp_path)
    assert_samples(samples, images)
    assert [Path(s.sample_id).name for s in samples[:2]] == ["a.npy", "b.npy[0]"]


def test_multi_input_npz(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    specs = [SPEC[0], InputSpec("scale", (None, 1), np.dtype(np.int64))]
    np.savez(tmp_path / "x.npz", input=images, scale=np.arange(N)[:, None])
    samples = read(tmp_path / "x.npz", specs)
    assert [int(s.inputs["scale"][0]) for s in samples] == list(range(N))
    assert samples[3].inputs["scale"].dtype == np.int64
    np.save(tmp_path / "y.npy", images)
    with pytest.raises(DataError, match="a .npy file feeds one input, the model has 2"):
        read(tmp_path / "y.npy", specs)
    np.savez(tmp_path / "z.npz", input=images, other=images)
    with pytest.raises(
        DataError, match=r"holds arrays \['input', 'other'\], the model inputs are \['input', 'scale'\]"
    ):
        read(tmp_path / "z.npz", specs)


def test_a_scalar_model_input_is_refused_in_one_line(tmp_path: Path, digits: tuple) -> None:
    """Silero VAD's ``sr`` is a rank-0 input: samples cannot be stacked along a batch axis."""
    images, _ = digits
    specs = [SPEC[0], InputSpec("sr", (), np.dtype(np.int64))]
    np.savez(tmp_path / "x.npz", input=images[0], sr=np.array(16000))
    with pytest.raises(DataError, match=r"x.npz: model input 'sr' is a scalar \(rank 0\)"):
        read(tmp_path / "x.npz", specs)


def test_batches_stack_samples_and_the_last_is_smaller(tmp_path: Path, digits: tuple) -> None:
    images, targets = digits
    np.savez(tmp_path / "calib.npz", input=images, labels=targets)
    batches = list(open_reader(config(tmp_path / "calib.npz"), SPEC).batches(3))
    assert [b.inputs["input"].shape for b in batches] == [(3, 1, 8, 8), (3, 1, 8, 8), (1, 1, 8, 8)]
    np.testing.assert_array_equal(np.concatenate([b.inputs["input"] for b in batches]), images)
    assert [label for b in batches for label in b.labels] == list(targets)
    assert len(batches[0].sample_ids) == 3
    np.save(tmp_path / "plain.npy", images)
    assert all(b.labels is None for b in open_reader(config(tmp_path / "plain.npy"), SPEC).batches(4))


def test_limit(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    np.save(tmp_path / "calib.npy", images)
    reader = open_reader(config(tmp_path / "calib.npy"), SPEC, limit=4)
    assert len(reader) == 4
    assert_samples(list(reader), images[:4])
    assert len(open_reader(config(tmp_path / "calib.npy"), SPEC, limit=100)) == N


def test_shape_mismatch_names_sample_input_and_expected_shape(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    np.save(tmp_path / "calib.npy", images)
    spec = [InputSpec("input", (None, 1, 16, 16), np.dtype(np.float32))]
    with pytest.raises(
        DataError,
        match=r"calib.npy\[0\]: input 'input' has shape \(1, 8, 8\), the model expects \(1, 16, 16\)",
    ):
        read(tmp_path / "calib.npy", spec)
    rank5 = [InputSpec("input", (None, 1, 1, 8, 8), np.dtype(np.float32))]
    with pytest.raises(
        DataError, match=r"calib.npy: input 'input' has shape \(7, 1, 8, 8\), the model expects"
    ):
        read(tmp_path / "calib.npy", rank5)
    dynamic = [InputSpec("input", (None, 1, None, None), np.dtype(np.float32))]
    assert len(read(tmp_path / "calib.npy", dynamic)) == N


# --- NaN and infinity --------------------------------------------------------------------------------


def test_count_nonfinite_counts_nan_and_both_infinities_in_float_arrays_only() -> None:
    array = np.zeros((2, 3, 4), dtype=np.float32)
    array[0, 1, 2] = array[1, 2, 3] = np.nan
    array[0, 0, 0], array[1, 0, 0], array[1, 1, 1] = np.inf, -np.inf, np.inf
    assert count_nonfinite(array) == (2, 3)
    assert count_nonfinite(array.astype(np.float16)) == (2, 3)
    assert count_nonfinite(np.ones(5, dtype=np.float64)) == (0, 0)
    assert count_nonfinite(np.array([1 + 2j, complex(np.nan, 0)])) == (1, 0)
    assert count_nonfinite(np.arange(6, dtype=np.int64)) == (0, 0)  # cannot hold them: skipped
    assert count_nonfinite(np.zeros(3, dtype=bool)) == (0, 0)


def test_nan_or_infinity_is_refused_naming_the_sample_and_the_key(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    nan = images.copy()
    nan[4, 0, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(
        DataError,
        match=r"nan.npy\[4\]: input 'input' holds 1 NaN and 0 infinite values; fix the data, "
        r"or set data.allow_nonfinite: true",
    ):
        read(tmp_path / "nan.npy")
    huge = images.astype(np.float64)
    huge[6, 0, 0, 0] = 1e300  # finite in float64, infinite once cast to the model's float32
    np.save(tmp_path / "huge.npy", huge)
    with pytest.raises(DataError, match=r"huge.npy\[6\]: input 'input' holds 0 NaN and 1 infinite values"):
        read(tmp_path / "huge.npy")
    np.save(tmp_path / "nan.npy", nan)
    batches = open_reader(config(tmp_path / "nan.npy"), SPEC).batches(4)
    assert len(next(batches).sample_ids) == 4  # samples 0 to 3 are clean
    with pytest.raises(DataError, match=r"nan.npy\[4\]"):
        next(batches)


def test_calibration_and_test_sections_name_their_own_key(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    bad = images.copy()
    bad[1, 0, 0, 0] = -np.inf
    np.save(tmp_path / "bad.npy", bad)
    for section in (CalibrationConfig, study_config.TestConfig):
        data = section.model_validate({"source": str(tmp_path / "bad.npy")})
        with pytest.raises(DataError, match=rf"set {section.section}.allow_nonfinite: true"):
            list(open_reader(data, SPEC))
    assert {CalibrationConfig.section, study_config.TestConfig.section} == {"calibration", "test"}


def test_allowed_nonfinite_samples_are_read_with_one_warning_per_reader(
    tmp_path: Path, digits: tuple, caplog
) -> None:
    images, _ = digits
    bad = images.copy()
    bad[1, 0, 0, :3] = np.nan
    bad[3, 0, 1, 1] = np.inf
    bad[5, 0, 2, 2], bad[5, 0, 2, 3] = np.nan, -np.inf
    np.save(tmp_path / "bad.npy", bad)
    caplog.set_level("WARNING", logger="autoquant.data")
    reader = open_reader(config(tmp_path / "bad.npy", allow_nonfinite=True), SPEC)
    samples = list(reader)
    assert len(samples) == N
    np.testing.assert_array_equal(samples[5].inputs["input"], bad[5])  # read as it is
    assert len(list(reader)) == N
    warnings = [r.getMessage() for r in caplog.records if "NaN or infinity" in r.getMessage()]
    source = tmp_path / "bad.npy"
    assert warnings == [
        f"{source}: 3 of {N} samples hold NaN or infinity (4 NaN, 2 infinite values), read as "
        f"data.allow_nonfinite allows: {source}[1], {source}[3], {source}[5]"
    ]


def test_empty_data_sets(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the data set is empty"):
        open_reader(config(tmp_path / "empty", format="numpy"), SPEC)
    with pytest.raises(DataError, match="empty: cannot tell the data format; expected .*data.mdb"):
        open_reader(config(tmp_path / "empty"), SPEC)
    (tmp_path / "list.txt").write_text("# nothing yet\n\n")
    with pytest.raises(DataError, match=f"{tmp_path / 'list.txt'}: the data set is empty"):
        open_reader(config(tmp_path / "list.txt", data_preprocess_str="scale=1"), SPEC)


def test_labels_count_mismatch(tmp_path: Path, digits: tuple) -> None:
    np.save(tmp_path / "calib.npy", digits[0])
    labels = write_labels(tmp_path / "labels.txt", range(5))
    source = tmp_path / "calib.npy"
    with pytest.raises(DataError, match=f"{labels}: 5 labels for 7 samples in {source}"):
        open_reader(config(source, labels=str(labels)), SPEC)


# --- labels ----------------------------------------------------------------------------------------


def test_detection_and_classification_label_files(tmp_path: Path) -> None:
    path = tmp_path / "det.label"
    path.write_text("4,258,98,505,234;17,1,137,97.5,502\n\n 3, 0, 0, 10, 10 ;\n")
    assert read_labels(path, "detection") == [
        [Box(4, 258, 98, 505, 234), Box(17, 1, 137, 97.5, 502)],
        [],
        [Box(3, 0, 0, 10, 10)],
    ]
    path.write_text("1,2,3,4,5\n1,2,3\n")
    with pytest.raises(DataError, match=rf"{path}:2: bad detection label '1,2,3'"):
        read_labels(path, "detection")
    path.write_text("3,13,4,6\n[1, 2]\n7\n")
    assert read_labels(path) == [3, 13, 4, 6, 1, 2, 7]
    path.write_text("1\n\n2\n")
    with pytest.raises(DataError, match=rf"{path}:2: bad classification label ''"):
        read_labels(path)
    path.write_text("cat\n")
    with pytest.raises(DataError, match=rf"{path}:1: bad classification label 'cat'"):
        read_labels(path)
    with pytest.raises(DataError, match="cannot read the label file"):
        read_labels(tmp_path / "missing.label")


# --- images ----------------------------------------------------------------------------------------


@pytest.fixture
def png_folder(tmp_path: Path, digits: tuple) -> Path:
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index, image in enumerate(digits[0]):
        assert cv2.imwrite(str(folder / f"{index:02d}.png"), (image[0] * 15).astype(np.uint8))
    return folder


def test_image_folder_and_list_with_labels(tmp_path: Path, png_folder: Path, digits: tuple) -> None:
    images, targets = digits
    expected = images * 15 * np.float32(1 / 16)
    samples = read(png_folder, data_preprocess_str="gray=True; scale=0.0625")
    assert_samples(samples, expected)
    assert samples[0].sample_id == str(png_folder / "00.png")
    lines = ["# calibration images", "", *(f"pngs/{i:02d}.png" for i in reversed(range(N)))]
    (tmp_path / "ImageList.txt").write_text("\n".join(lines) + "\n")
    labels = write_labels(tmp_path / "labels.txt", reversed(targets))
    samples = read(
        tmp_path / "ImageList.txt", data_preprocess_str="gray=True;scale=0.0625", labels=str(labels)
    )
    assert_samples(samples, expected[::-1], targets[::-1])


def test_real_jpeg_with_template_and_auto_format(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text(f"{JPEG}\n")
    spec = [InputSpec("input", (1, 3, 224, 224), np.dtype(np.float32))]
    reader = open_reader(config(tmp_path / "list.txt", image_data_preprocess="vgg_tensorflow"), spec)
    (sample,) = list(reader)
    assert sample.inputs["input"].shape == (3, 224, 224)
    with pytest.raises(ConfigError, match="unknown image_data_preprocess template"):
        open_reader(config(tmp_path / "list.txt", image_data_preprocess="vgg"), spec)


def test_decode_error_stop_or_skip(png_folder: Path, tmp_path: Path, digits: tuple, caplog) -> None:
    corrupt = png_folder / "01b.jpg"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    labels = write_labels(tmp_path / "labels.txt", range(N + 1))
    values = {"data_preprocess_str": "gray=True", "labels": str(labels)}
    with pytest.raises(DataError, match=f"{corrupt}: cannot decode image"):
        read(png_folder, **values)
    reader = open_reader(config(png_folder, on_decode_error="skip", **values), SPEC)
    assert len(reader) == N + 1  # an upper bound: the corrupt image is only found while reading
    with caplog.at_level(logging.WARNING, logger="autoquant.data"):
        samples = list(reader)
    assert [s.label for s in samples] == [0, 1, 3, 4, 5, 6, 7]
    assert str(corrupt) in caplog.text
    corrupt.rename(png_folder / "99.jpg")
    for path in png_folder.glob("*.png"):
        path.unlink()
    with pytest.raises(DataError, match="the data set is empty"):
        read(png_folder, on_decode_error="skip", data_preprocess_str="gray=True")


def test_images_need_a_single_input_model(png_folder: Path) -> None:
    with pytest.raises(DataError, match="images feed one model input, the model has 2"):
        read(
            png_folder,
            [*SPEC, InputSpec("b", (None, 1), np.dtype(np.float32))],
            data_preprocess_str="gray=True",
        )


# --- lmdb ------------------------------------------------------------------------------------------


def test_lmdb_round_trip_with_batched_records(tmp_path: Path, digits: tuple) -> None:
    images, targets = digits
    path = tmp_path / "calib_lmdb"
    with LmdbWriter(path) as writer:
        writer.put(images[:3], labels=list(targets[:3]))
        writer.put({"input": images[3]}, labels=[targets[3]])
    with LmdbWriter(path) as writer:  # appends
        writer.put(images[4:], labels=targets[4:])
    assert (path / "data.label").read_text().splitlines()[1] == str(targets[3])
    reader = open_reader(config(path), SPEC)
    assert len(reader) == N
    samples = list(reader)
    assert_samples(samples, images, targets)
    assert samples[0].sample_id == f"{path}#00000000[0]" and samples[3].sample_id == f"{path}#00000001"
    assert_samples(read(path / "data.mdb", format="lmdb"), images, targets)


def test_lmdb_detection_labels_and_mismatches(tmp_path: Path, digits: tuple) -> None:
    images, _ = digits
    path = tmp_path / "det"
    boxes = [[Box(1, 0.0, 0.0, 4.0, 4.0)], [], [Box(2, 1, 1, 2, 2), Box(3, 0, 0, 1, 1)]]
    with LmdbWriter(path) as writer:
        for image, record in zip(images, boxes, strict=False):
            writer.put(image, labels=record)
        writer.put(images[3], labels="5,1,2,3,4")
        with pytest.raises(DataError, match="give labels for every record or for none"):
            writer.put(images[4])
    samples = read(path, label_format="detection")
    assert [s.label for s in samples] == [*boxes, [Box(5, 1, 2, 3, 4)]]
    with pytest.raises(
        DataError,
        match=rf"{path}#00000000: input 'input' has shape \(1, 8, 8\), the model expects \(8, 8, 1\)",
    ):
        read(path, [InputSpec("input", (None, 8, 8, 1), np.dtype(np.float32))], label_format="detection")
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.delete(b"00000003")
    env.close()
    with pytest.raises(DataError, match=f"{path / 'data.label'}: 4 labels for 3 samples in {path}"):
        open_reader(config(path, label_format="detection"), SPEC)


def test_lmdb_missing_folder_and_foreign_records(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no LMDB here"):
        open_reader(config(tmp_path, format="lmdb"), SPEC)
    env = lmdb.open(str(tmp_path / "foreign"))
    with env.begin(write=True) as txn:
        txn.put(b"a", b"not an npz")
    env.close()
    with pytest.raises(DataError, match=f"{tmp_path / 'foreign'}#a: the record is not .npz array data"):
        open_reader(config(tmp_path / "foreign"), SPEC)


# --- callable --------------------------------------------------------------------------------------

MODULE = """
import numpy as np
from sklearn.datasets import load_digits

def samples():
    images = load_digits().images[:7, None].astype(np.float32)
    return [images[i] for i in range(7)]

def batches():
    data = load_digits()
    images, targets = data.images[:7, None], data.target[:7]
    yield images[:4], targets[:4]
    yield {"input": images[4:]}, list(targets[4:])

def nothing():
    return iter(())

def wrong_name():
    return [{"image": np.zeros((1, 8, 8))}]

def ragged():
    return [np.zeros((1, 8, 8)), np.zeros((1, 9, 9))]

def needs_args(path):
    return []

def not_iterable():
    return 3

def one_label_for_two():
    yield np.zeros((2, 1, 8, 8)), [1]

not_a_function = 3
"""


def test_callable_from_module_and_file(tmp_path: Path, digits: tuple, monkeypatch) -> None:
    images, targets = digits
    (tmp_path / "aq_test_data_module.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "aq_test_data_module", raising=False)
    reader = open_reader(config("aq_test_data_module:samples"), SPEC)
    assert len(reader) == N
    assert_samples(list(reader), images)
    file_spec = f"{tmp_path / 'aq_test_data_module.py'}:batches"
    reader = open_reader(config(file_spec), SPEC, limit=5)
    assert len(reader) == 5
    samples = list(reader)
    assert_samples(samples, images[:5], targets[:5])
    assert samples[4].sample_id == f"{file_spec}#1[0]"


def test_callable_errors(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "aq_test_data_errors.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    base = str(tmp_path / "aq_test_data_errors.py")
    with pytest.raises(DataError, match=r"broken.py:f': cannot import .*broken.py \(RuntimeError: boom\)"):
        open_reader(config(f"{tmp_path / 'broken.py'}:f"), SPEC)
    with pytest.raises(DataError, match="'no_such_module_xyz:f': cannot import no_such_module_xyz"):
        open_reader(config("no_such_module_xyz:f"), SPEC)
    with pytest.raises(DataError, match=f"{base}:missing': .* has no attribute 'missing'"):
        open_reader(config(f"{base}:missing"), SPEC)
    with pytest.raises(DataError, match="not_a_function is a int, expected a function or class"):
        open_reader(config(f"{base}:not_a_function"), SPEC)
    with pytest.raises(DataError, match="no such file"):
        open_reader(config(f"{tmp_path / 'nope.py'}:f"), SPEC)
    reader = open_reader(config(f"{base}:nothing"), SPEC)
    assert len(reader) == 0
    with pytest.raises(DataError, match="the data set is empty"):
        list(reader)
    with pytest.raises(DataError, match=r"the sample has inputs \['image'\], the model expects \['input'\]"):
        read(f"{base}:wrong_name")
    with pytest.raises(DataError, match="needs_args: calling it with no arguments failed"):
        read(f"{base}:needs_args")
    with pytest.raises(DataError, match="not_iterable: returned int, expected an iterable of samples"):
        read(f"{base}:not_iterable")
    with pytest.raises(
        DataError, match=r"one_label_for_two#0: a stack of 2 samples needs 2 labels, got \[1\]"
    ):
        read(f"{base}:one_label_for_two")
    labels = write_labels(tmp_path / "labels.txt", [1])
    with pytest.raises(DataError, match="a callable source gives its own labels"):
        read(f"{base}:samples", labels=str(labels))
    dynamic = [InputSpec("input", (None, 1, None, None), np.dtype(np.float32))]
    with pytest.raises(DataError, match="cannot be stacked"):
        list(open_reader(config(f"{base}:ragged"), dynamic).batches(2))


def test_more_numpy_errors(tmp_path: Path, digits: tuple) -> None:
    images, targets = digits
    np.savez(tmp_path / "a.npz", input=images, labels=targets[:3])
    with pytest.raises(DataError, match=f"{tmp_path / 'a.npz'}: 3 labels for 7 samples"):
        read(tmp_path / "a.npz")
    np.savez(tmp_path / "a.npz", input=images, labels=targets)
    np.save(tmp_path / "b.npy", images)
    with pytest.raises(DataError, match="only 1 of 2 files hold a 'labels' array"):
        read(tmp_path)
    with pytest.raises(DataError, match="no such .npy/.npz file or folder"):
        read(tmp_path / "missing", format="numpy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="bad.npy: cannot read the array file"):
        read(tmp_path / "bad.npy")
    specs = [SPEC[0], InputSpec("scale", (None, 1), np.dtype(np.int64))]
    np.savez(tmp_path / "c.npz", input=images, scale=np.zeros((3, 1)))
    with pytest.raises(DataError, match="c.npz: the inputs hold different numbers of samples"):
        read(tmp_path / "c.npz", specs)


def test_more_image_list_and_lmdb_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such image list or folder"):
        read(tmp_path / "missing.txt", format="images", data_preprocess_str="scale=1")
    (tmp_path / "list.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="cannot read the image list"):
        read(tmp_path / "list.txt", data_preprocess_str="scale=1")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "data.mdb").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="cannot open the LMDB"):
        read(tmp_path / "broken")
    with LmdbWriter(tmp_path / "w") as writer, pytest.raises(DataError, match="must fit on one line"):
        writer.put(np.zeros((1, 8, 8)), labels="1\n2")
    with pytest.raises(
        DataError, match="unknown label format 'segmentation'; valid: classification, detection"
    ):
        read_labels(tmp_path / "list.txt", "segmentation")


def test_more_callable_and_validation_errors(tmp_path: Path) -> None:
    (tmp_path / "aq_test_more.py").write_text(
        "import numpy as np\n"
        "def arrays():\n    return [np.zeros((1, 8, 8))]\n"
        "def strings():\n    return [np.full((1, 8, 8), 'a')]\n"
    )
    base = tmp_path / "aq_test_more.py"
    specs = [SPEC[0], InputSpec("b", (None, 1), np.dtype(np.float32))]
    with pytest.raises(
        DataError, match="a multi-input model needs a mapping input name -> array, got ndarray"
    ):
        read(f"{base}:arrays", specs)
    with pytest.raises(DataError, match="strings#0: input 'input' is <U1 data, the model expects float32"):
        read(f"{base}:strings")
    with pytest.raises(DataError, match="must be module:function or /path/file.py:function"):
        load_callable("no_function_here:", "data source", DataError)
    reader = open_reader(config(f"{base}:arrays"), SPEC)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(reader.batches(0))
    with pytest.raises(ValueError, match="limit must be >= 0"):
        open_reader(config(f"{base}:arrays"), SPEC, limit=-1)


# --- registry and detection ------------------------------------------------------------------------


def test_registry_and_format_detection(tmp_path: Path) -> None:
    assert set(registered_readers()) >= {"images", "numpy", "lmdb", "callable"}
    with pytest.raises(ValueError, match="already registered as 'numpy'"):
        register_reader("numpy")(DataReader)
    with pytest.raises(DataError, match=f"{tmp_path / 'missing.npy'}: no such file or folder"):
        open_reader(config(tmp_path / "missing.npy"), SPEC)
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(
        DataError, match=r"data.csv: cannot tell the data format.*set data.format to one of .*numpy"
    ):
        open_reader(config(tmp_path / "data.csv"), SPEC)
    with pytest.raises(ConfigError, match="no data source"):
        open_reader(DataConfig(), SPEC)
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "a.npy", np.zeros((1, 8, 8), np.float32))
    cv2.imwrite(str(tmp_path / "mixed" / "b.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(
        DataError, match=r"mixed: could be read as numpy or images; set data.format to one of them"
    ):
        open_reader(config(tmp_path / "mixed"), SPEC)
    assert len(open_reader(config(tmp_path / "mixed", format="numpy"), SPEC)) == 1
