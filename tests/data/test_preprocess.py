"""Preprocessing strings checked against hand-computed numpy references on real images."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from autoquant.data._preprocess import TEMPLATES, VALID_KEYS, Preprocess, parse_preprocess, resolve_preprocess
from autoquant.errors import ConfigError, DataError

JPEG = Path(str(importlib.resources.files("sklearn.datasets.images") / "china.jpg"))
MEAN_BGR = np.array([103.94, 116.78, 123.68], np.float32)


def _decode(path: Path, flag: int = cv2.IMREAD_COLOR) -> np.ndarray:
    return cv2.imdecode(np.fromfile(path, np.uint8), flag)


@pytest.fixture(scope="module")
def jpeg() -> np.ndarray:
    return _decode(JPEG)


@pytest.fixture
def png(tmp_path: Path, jpeg: np.ndarray) -> Path:
    path = tmp_path / "china.png"
    assert cv2.imwrite(str(path), jpeg[50:350, 100:500])
    return path


def test_jpeg_matches_reference(jpeg: np.ndarray) -> None:
    spec = "resize_h=256,resize_w=320;crop_h=224,crop_w=288;mean_value=103.94:116.78:123.68,scale=0.017,bgr2rgb=True"
    out = parse_preprocess(spec)(JPEG)
    ref = cv2.resize(jpeg, (320, 256)).astype(np.float32)[16:240, 16:304]
    ref = ((ref - MEAN_BGR) * np.float32(0.017))[:, :, ::-1].transpose(2, 0, 1)
    assert out.shape == (3, 224, 288) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-6)


def test_png_matches_reference(png: Path) -> None:
    image = _decode(png)
    assert image.shape == (300, 400, 3)
    spec = " resize_side = 100 , interp = area ; crop_fraction=0.875; mean_value=127.5, std=58:57:56, scale=2; mirror=1 "
    out = parse_preprocess(spec)(png)
    ref = cv2.resize(image, (133, 100), interpolation=cv2.INTER_AREA).astype(np.float32)
    top, left = int((100 - 87.5) / 2), int((133 - 133 * 0.875) / 2)
    ref = ref[top : 100 - top, left : 133 - left]
    ref = (ref - 127.5) / np.array([58, 57, 56], np.float32) * 2
    np.testing.assert_allclose(out, ref[:, ::-1].transpose(2, 0, 1), atol=1e-5, rtol=1e-6)


def test_vgg_template_subtracts_bgr_mean_before_the_swap(jpeg: np.ndarray) -> None:
    out = resolve_preprocess(None, "vgg_tensorflow")(JPEG)
    ref = cv2.resize(jpeg, (384, 256)).astype(np.float32)[16:240, 80:304]
    ref = (ref - MEAN_BGR)[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-6)


def test_ssd_inception_template(jpeg: np.ndarray) -> None:
    out = resolve_preprocess(None, "ssd_inception_tensorflow")(JPEG)
    ref = cv2.resize(jpeg, (256, 256)).astype(np.float32) * np.float32(0.003921568859368563)
    ref = cv2.resize(ref[16:240, 16:240], (224, 224))
    ref = ((ref - 0.5) * 2)[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_parses_and_runs(name: str) -> None:
    preprocess = resolve_preprocess("ignored=1", name)
    assert preprocess.spec == TEMPLATES[name]
    assert preprocess(JPEG).shape == (3, 224, 224)


def test_letterbox_keeps_aspect_and_pads_centered(jpeg: np.ndarray) -> None:
    out = parse_preprocess("resize_h=320,resize_w=320,padding=True,pad_value=114;layout=NHWC")(JPEG)
    assert out.shape == (320, 320, 3)
    resized = cv2.resize(jpeg, (320, 214))
    top = (320 - 214) // 2
    np.testing.assert_array_equal(out[top : top + 214], resized)
    assert (out[:top] == 114).all() and (out[top + 214 :] == 114).all()


def test_padding_needs_a_resize() -> None:
    with pytest.raises(ConfigError, match="padding=True needs resize_h"):
        parse_preprocess("padding=True")


@pytest.mark.parametrize(
    ("code", "flip"), [(1, np.s_[:, ::-1]), (0, np.s_[::-1]), (-1, np.s_[::-1, ::-1]), (5, ())]
)
def test_mirror(jpeg: np.ndarray, code: int, flip: tuple) -> None:
    out = parse_preprocess(f"mirror={code};layout=NHWC;dtype=uint8")(JPEG)
    np.testing.assert_array_equal(out, jpeg[flip])


def test_gray_decodes_one_channel() -> None:
    out = parse_preprocess("gray=True;resize_h=40,resize_w=60")(JPEG)
    assert out.shape == (1, 40, 60)
    np.testing.assert_allclose(out[0], cv2.resize(_decode(JPEG, cv2.IMREAD_GRAYSCALE), (60, 40)))


def test_nhwc_layout_and_dtypes(jpeg: np.ndarray) -> None:
    assert parse_preprocess("resize_h=8,resize_w=10;layout=NHWC")(JPEG).shape == (8, 10, 3)
    half = parse_preprocess("scale=0.0039;dtype=float16")(JPEG)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, (jpeg * np.float32(0.0039)).transpose(2, 0, 1), rtol=1e-3)
    raw = parse_preprocess("resize_h=20,resize_w=30;dtype=uint8")(JPEG)
    np.testing.assert_array_equal(raw, cv2.resize(jpeg, (30, 20)).transpose(2, 0, 1))
    signed = parse_preprocess("mean_value=100;dtype=int8")(JPEG)
    expected = np.clip(np.rint(jpeg.astype(np.float32) - 100), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(signed, expected.transpose(2, 0, 1))


def test_crop_fraction_follows_tf_central_crop() -> None:
    image = np.arange(10 * 7 * 3, dtype=np.uint8).reshape(10, 7, 3)
    out = parse_preprocess("crop_fraction=0.5;layout=NHWC").apply(image)
    np.testing.assert_array_equal(out, image[2:8, 1:6])


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_preprocess("resize_h=224,resize_w=224;mean=1:2:3")
    message = str(info.value)
    assert "op 2 'mean=1:2:3': unknown key 'mean'" in message
    assert all(key in message for key in VALID_KEYS)


def test_every_bad_item_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_preprocess(
            "resize_h=-1,resize_w=2;crop_h=3;std=0;layout=NCHW;layout=NHWC;scale;bgr2rgb=maybe;x=1"
        )
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 7
    for part in (
        "must be a positive integer",
        "crop_h and crop_w",
        "std must not be 0",
        "contradicts",
        "'scale'",
    ):
        assert any(part in line for line in lines), part


def test_user_defined_needs_a_string_and_unknown_templates_are_listed() -> None:
    assert resolve_preprocess("scale=2", "user_defined").steps == parse_preprocess("scale=2").steps
    with pytest.raises(ConfigError, match="needs data_preprocess_str"):
        resolve_preprocess(None, "user_defined")
    with pytest.raises(ConfigError, match="unknown image_data_preprocess template 'vgg'.*ssd_vgg_tensorflow"):
        resolve_preprocess(None, "vgg")


def test_undecodable_missing_and_empty_files(tmp_path: Path) -> None:
    corrupt, empty = tmp_path / "corrupt.jpg", tmp_path / "empty.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty.write_bytes(b"")
    preprocess = parse_preprocess("scale=1")
    for path in (corrupt, empty):
        with pytest.raises(DataError, match=f"{path}: cannot decode image"):
            preprocess(path)
    with pytest.raises(DataError, match="missing.jpg: cannot read image"):
        preprocess(tmp_path / "missing.jpg")


def test_steps_that_do_not_fit_the_image_name_it() -> None:
    with pytest.raises(DataError, match="china.jpg: image 427x640 is smaller than the crop 500x500"):
        parse_preprocess("crop_h=500,crop_w=500")(JPEG)
    with pytest.raises(DataError, match="mean_value has 2 values for 3 image channels"):
        parse_preprocess("mean_value=1:2")(JPEG)


def test_whitespace_and_empty_ops_are_ignored_and_the_result_is_frozen() -> None:
    preprocess = parse_preprocess("resize_h=2,resize_w=2;scale=3")
    assert parse_preprocess(" resize_h = 2 , resize_w=2 ;; scale=3 ;").steps == preprocess.steps
    assert isinstance(preprocess, Preprocess)
    with pytest.raises(AttributeError):
        preprocess.gray = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resize_side=256,resize_h=2,resize_w=2", "use either resize_side or resize_h/resize_w"),
        ("resize_h=2,resize_w=2,pad_value=3", "pad_value needs padding=True"),
        ("interp=cubic", "interp needs a resize"),
        ("crop_h=2,crop_w=2,crop_fraction=0.5", "use either crop_fraction or crop_h/crop_w"),
        ("crop_fraction=1.5", "crop_fraction=1.5: must be a number in (0, 1]"),
        ("scale=2,scale=3", "scale is given twice"),
        ("=3", "'=3' is not key=value"),
        ("layout=CHW", "layout=CHW: must be one of NCHW, NHWC"),
        ("dtype=float64", "dtype=float64: must be one of float32, float16, uint8, int8"),
        ("mirror=yes", "mirror=yes: must be a cv2.flip code"),
        ("interp=bilinear,resize_side=3", "interp=bilinear: must be one of linear, nearest, cubic, area"),
        ("mean_value=1::2", "mean_value=1::2: must be numbers separated by ':'"),
        ("pad_value=x", "pad_value=x: must be a number"),
    ],
)
def test_inconsistent_or_bad_ops(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_preprocess(spec)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["linear", "nearest", "cubic", "area"])
def test_each_interpolation_resizes_like_opencv(jpeg: np.ndarray, name: str) -> None:
    """The interpolation names map to OpenCV's flags (autoquant does not import cv2 to read them)."""
    got = parse_preprocess(f"resize_h=37, resize_w=53, interp={name}").apply(jpeg)
    ref = cv2.resize(jpeg, (53, 37), interpolation=getattr(cv2, f"INTER_{name.upper()}"))
    np.testing.assert_array_equal(got, ref.astype(np.float32).transpose(2, 0, 1))


@pytest.mark.integration
def test_array_data_does_not_import_opencv() -> None:
    """cv2 takes 50 to 200 ms to import: a study whose data are arrays does without it."""
    code = "import sys, autoquant.search, autoquant.cli; print('cv2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
