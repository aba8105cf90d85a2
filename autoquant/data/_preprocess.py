"""Image preprocessing described by the seed tool's preprocessing string.

A string such as ``"resize_h=256,resize_w=256;mean_value=103.94:116.78:123.68,scale=1.0"`` holds
ops separated by ``;``, parameters within an op separated by ``,`` and multiple values separated
by ``:``. Ops run in order; within one op the keys run in a fixed order: resize, crop, normalize
(``mean_value``, ``std``, ``scale``), channel swap, mirror, padding. ``gray``, ``layout`` and
``dtype`` are global settings and may appear in any op.
Images are decoded by OpenCV (BGR, or gray) into ``H x W x C`` uint8 arrays that stay uint8 through
resize/crop/flip, as in OpenCV pipelines, and become float32 at the first normalize or padding. The
result is one sample without batch dim: ``C x H x W`` (NCHW, default) or ``H x W x C`` (NHWC).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoquant.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TEMPLATES: dict[str, str] = {
    "vgg_tensorflow": "resize_side=256;crop_h=224, crop_w=224;mean_value=103.94:116.78:123.68, scale=1.0, bgr2rgb=True",
    "ssd_vgg_tensorflow": "resize_h=256,resize_w=256;mean_value=103.94:116.78:123.68, scale=1.0, bgr2rgb=True;crop_h=224, crop_w=224",
    "ssd_inception_tensorflow": "resize_h=256, resize_w=256;scale=0.003921568859368563;crop_fraction=0.875;resize_h=224, resize_w=224;mean_value=0.5:0.5:0.5, scale=2.0, bgr2rgb=True",
}
USER_DEFINED = "user_defined"

# OpenCV's cv2.INTER_* values, fixed by its API: cv2 itself is imported where images are decoded
# or resized, not by the many studies whose data are arrays (it takes 50 to 200 ms to import).
_INTERP = {"linear": 1, "nearest": 0, "cubic": 2, "area": 3}
_DTYPES = ("float32", "float16", "uint8", "int8")
_LAYOUTS = ("NCHW", "NHWC")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _cv2() -> Any:
    """OpenCV, with its native log (written straight to stderr) at fatal errors only: a file it
    cannot decode is autoquant's one-line error, so OpenCV's own lines about it only come first.
    With autoquant's debug logging (``--verbose``) its warnings and errors stay."""
    import cv2

    verbose = logging.getLogger("autoquant").isEnabledFor(logging.DEBUG)
    levels = cv2.utils.logging
    levels.setLogLevel(levels.LOG_LEVEL_WARNING if verbose else levels.LOG_LEVEL_FATAL)
    return cv2


def _checked(parse: Callable[[str], Any], must: str, ok: Callable[[Any], bool] = bool) -> Callable:
    """A value parser raising ``ValueError(must)`` when ``parse`` fails or ``ok`` rejects the value."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except (ValueError, KeyError):
            raise ValueError(must) from None
        if not ok(value):
            raise ValueError(must)
        return value

    return convert


def _one_of(choices: tuple[str, ...], case: Callable[[str], str]) -> Callable[[str], Any]:
    return _checked(case, f"must be one of {', '.join(choices)}", lambda v: v in choices)


_POSITIVE = _checked(int, "must be a positive integer", lambda v: v > 0)
_BOOL = _checked(lambda t: _BOOLS[t.lower()], "must be True or False", lambda v: True)
_FLOAT = _checked(float, "must be a number", lambda v: True)
_FLOATS = _checked(lambda t: tuple(map(float, t.split(":"))), "must be numbers separated by ':'")
_OP_KEYS: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys(("resize_h", "resize_w", "resize_side"), _POSITIVE),
    "interp": _one_of(tuple(_INTERP), str.lower),
    "padding": _BOOL,
    "pad_value": _FLOAT,
    **dict.fromkeys(("crop_h", "crop_w"), _POSITIVE),
    "crop_fraction": _checked(float, "must be a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    **dict.fromkeys(("mean_value", "std"), _FLOATS),
    "scale": _FLOAT,
    **dict.fromkeys(("bgr2rgb", "rgb2bgr"), _BOOL),
    "mirror": _checked(int, "must be a cv2.flip code: 1, 0 or -1", lambda v: True),
}
_GLOBAL_KEYS: dict[str, Callable[[str], Any]] = {
    "gray": _BOOL,
    "layout": _one_of(_LAYOUTS, str.upper),
    "dtype": _one_of(_DTYPES, str.lower),
}
_KEYS = {**_OP_KEYS, **_GLOBAL_KEYS}
VALID_KEYS = tuple(_KEYS)
# Consistency rules checked on each op: (violated?, message).
_RULES: tuple[tuple[Callable[[dict[str, Any]], bool], str], ...] = (
    (lambda op: ("resize_h" in op) != ("resize_w" in op), "resize_h and resize_w must be given together"),
    (lambda op: "resize_h" in op and "resize_side" in op, "use either resize_side or resize_h/resize_w"),
    (lambda op: op.get("padding", False) and "resize_h" not in op, "padding=True needs resize_h, resize_w"),
    (lambda op: "pad_value" in op and not op.get("padding"), "pad_value needs padding=True"),
    (lambda op: "interp" in op and not {"resize_h", "resize_side"} & set(op), "interp needs a resize"),
    (lambda op: ("crop_h" in op) != ("crop_w" in op), "crop_h and crop_w must be given together"),
    (lambda op: "crop_h" in op and "crop_fraction" in op, "use either crop_fraction or crop_h/crop_w"),
    (lambda op: 0.0 in op.get("std", ()), "std must not be 0"),
)


def _with_channels(image: np.ndarray) -> np.ndarray:
    return image[:, :, None] if image.ndim == 2 else image


@dataclass(frozen=True)
class Resize:
    """Resize to ``height x width``: exactly (``exact``), short side to ``height`` keeping the aspect
    ratio (``short_side``, TF's ``resize_side``) or to fit inside, keeping the aspect ratio (``fit``)."""

    height: int
    width: int
    mode: str = "exact"
    interp: int = _INTERP["linear"]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        cv2 = _cv2()

        height, width = image.shape[:2]
        size = (self.width, self.height)
        if self.mode != "exact":
            if self.mode == "short_side":
                scale = self.height / min(height, width)
            else:
                scale = min(self.height / height, self.width / width)
            size = (max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5)))
        return _with_channels(cv2.resize(image, size, interpolation=self.interp))


@dataclass(frozen=True)
class CenterCrop:
    """Keep the central ``height x width`` window or, with ``fraction``, the central fraction of
    both sides like TensorFlow's ``central_crop``."""

    height: int = 0
    width: int = 0
    fraction: float = 0.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if self.fraction:
            top, left = int((height - height * self.fraction) / 2), int((width - width * self.fraction) / 2)
            return image[top : height - top, left : width - left]
        if height < self.height or width < self.width:
            raise ValueError(f"image {height}x{width} is smaller than the crop {self.height}x{self.width}")
        top, left = (height - self.height) // 2, (width - self.width) // 2
        return image[top : top + self.height, left : left + self.width]


@dataclass(frozen=True)
class Normalize:
    """``(x - mean) / std * scale`` with per-channel or single ``mean`` and ``std``."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        for name, values in (("mean_value", self.mean), ("std", self.std)):
            if len(values) not in (1, image.shape[2]):
                raise ValueError(f"{name} has {len(values)} values for {image.shape[2]} image channels")
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (image.astype(np.float32) - mean) / std * np.float32(self.scale)


_FLIPS = {0: np.s_[::-1], 1: np.s_[:, ::-1], -1: np.s_[::-1, ::-1], 2: np.s_[:, :, ::-1]}


@dataclass(frozen=True)
class Flip:
    """Flip like ``cv2.flip`` (0 vertically, 1 horizontally, -1 both); 2 reverses the channels."""

    code: int

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image[_FLIPS[self.code]]


@dataclass(frozen=True)
class Pad:
    """Pad centered to ``height x width`` with ``value`` (second half of a letterbox)."""

    height: int
    width: int
    value: float = 0.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width, channels = image.shape  # never larger: it follows a fit-inside resize
        out = np.full((self.height, self.width, channels), self.value, dtype=np.float32)
        top, left = (self.height - height) // 2, (self.width - width) // 2
        out[top : top + height, left : left + width] = image
        return out


Step = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Preprocess:
    """A parsed preprocessing string: decode an image file into one model input sample.

    Attributes:
        steps: The steps, in the order they run on the ``H x W x C`` image.
        gray: Decode as one channel instead of BGR.
        layout: ``"NCHW"`` (sample is ``C x H x W``) or ``"NHWC"`` (``H x W x C``).
        dtype: The sample dtype; integer dtypes are rounded and clipped to their range.
        spec: The string this was parsed from.
    """

    steps: tuple[Step, ...] = ()
    gray: bool = False
    layout: str = "NCHW"
    dtype: str = "float32"
    spec: str = ""

    def decode(self, image_path: str | Path) -> np.ndarray:
        """Read and decode an image file into a uint8 ``H x W x C`` array (BGR or one channel).

        Raises:
            DataError: The file cannot be read or decoded.
        """
        try:
            buffer = np.fromfile(image_path, np.uint8)
        except OSError as exc:
            raise DataError(f"{image_path}: cannot read image ({exc.strerror or exc})") from None
        cv2 = _cv2()

        flag = cv2.IMREAD_GRAYSCALE if self.gray else cv2.IMREAD_COLOR
        try:
            image = cv2.imdecode(buffer, flag) if buffer.size else None
        except cv2.error:
            image = None
        if image is None:
            raise DataError(f"{image_path}: cannot decode image (empty, corrupt or not an image format)")
        return _with_channels(image)

    def apply(self, image: np.ndarray, where: str = "image") -> np.ndarray:
        """Run the steps on a decoded ``H x W x C`` (or ``H x W``) image and convert layout and dtype.

        Raises:
            DataError: A step does not fit the image (crop larger than the image, wrong channel count).
        """
        image = _with_channels(np.asarray(image))
        for step in self.steps:
            try:
                image = step(image)
            except ValueError as exc:
                raise DataError(f"{where}: {exc} (preprocessing {self.spec!r})") from None
        if self.layout == "NCHW":
            image = image.transpose(2, 0, 1)
        if self.dtype in ("uint8", "int8"):
            info = np.iinfo(self.dtype)
            image = np.clip(np.rint(image.astype(np.float32)), info.min, info.max)
        return np.ascontiguousarray(image, dtype=self.dtype)

    def __call__(self, image_path: str | Path) -> np.ndarray:
        """Decode and preprocess one image file into one sample without batch dim."""
        return self.apply(self.decode(image_path), where=str(image_path))


def _parse_op(segment: str, problem: Callable[[str], None]) -> dict[str, Any]:
    """Split one op into converted ``key -> value``; report bad items through ``problem``."""
    op: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in segment.split(","))):
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key or not text:
            problem(f"{item!r} is not key=value")
        elif key not in _KEYS:
            problem(f"unknown key {key!r}; valid keys: {', '.join(VALID_KEYS)}")
        elif key in op:
            problem(f"{key} is given twice")
        else:
            try:
                op[key] = _KEYS[key](text)
            except ValueError as exc:
                problem(f"{key}={text}: {exc}")
    return op


def _op_steps(op: dict[str, Any]) -> list[Step]:
    """Build the steps of one consistent op in the fixed key order."""
    steps: list[Step] = []
    interp = _INTERP[op.get("interp", "linear")]
    if "resize_h" in op and "resize_w" in op:
        size = (op["resize_h"], op["resize_w"])
        steps.append(Resize(*size, "fit" if op.get("padding") else "exact", interp))
    elif "resize_side" in op:
        steps.append(Resize(op["resize_side"], op["resize_side"], "short_side", interp))
    if "crop_h" in op and "crop_w" in op:
        steps.append(CenterCrop(op["crop_h"], op["crop_w"]))
    elif "crop_fraction" in op:
        steps.append(CenterCrop(fraction=op["crop_fraction"]))
    if {"mean_value", "std", "scale"} & set(op):
        steps.append(Normalize(op.get("mean_value", (0.0,)), op.get("std", (1.0,)), op.get("scale", 1.0)))
    if op.get("bgr2rgb") or op.get("rgb2bgr"):
        steps.append(Flip(2))
    if op.get("mirror") in (-1, 0, 1):
        steps.append(Flip(op["mirror"]))
    elif "mirror" in op:
        logger.debug("mirror=%s is not a cv2.flip code (-1, 0, 1): no flip", op["mirror"])
    if op.get("padding") and "resize_h" in op and "resize_w" in op:
        steps.append(Pad(op["resize_h"], op["resize_w"], op.get("pad_value", 0.0)))
    return steps


def parse_preprocess(spec: str) -> Preprocess:
    """Parse a preprocessing string such as ``"resize_h=224,resize_w=224;scale=0.0039"``.

    Args:
        spec: Ops separated by ``;``, ``key=value`` parameters by ``,``, multiple values by ``:``.

    Returns:
        The preprocessing, callable on an image path.

    Raises:
        ConfigError: Every unknown key, bad value or inconsistent op, one per line.
    """
    errors: list[str] = []
    steps: list[Step] = []
    settings: dict[str, Any] = {}
    segments = [segment.strip() for segment in spec.split(";")]
    for index, segment in enumerate(filter(None, segments), start=1):

        def problem(message: str, where: str = f"op {index} {segment!r}") -> None:
            errors.append(f"{where}: {message}")

        known = len(errors)
        op = _parse_op(segment, problem)
        for key in _GLOBAL_KEYS.keys() & op.keys():
            value = op.pop(key)
            if settings.setdefault(key, value) != value:
                problem(f"{key}={value} contradicts {key}={settings[key]} given before")
        for violated, message in _RULES if len(errors) == known else ():  # no follow-up errors
            if violated(op):
                problem(message)
        steps += _op_steps(op)
    if errors:
        raise ConfigError(f"bad preprocessing string {spec!r}:\n  " + "\n  ".join(errors))
    return Preprocess(tuple(steps), spec=spec, **settings)


def resolve_preprocess(data_preprocess_str: str | None, template: str) -> Preprocess:
    """Pick the preprocessing from a template name or the user's string.

    Args:
        data_preprocess_str: The user's preprocessing string (used with ``"user_defined"``).
        template: ``"user_defined"`` or a name in :data:`TEMPLATES`.

    Returns:
        The parsed preprocessing.

    Raises:
        ConfigError: Unknown template, missing string for ``"user_defined"``, or a bad string.
    """
    if template == USER_DEFINED:
        if not data_preprocess_str or not data_preprocess_str.strip():
            raise ConfigError(
                "image data needs data_preprocess_str (e.g. 'resize_h=224,resize_w=224;scale=0.0039') "
                f"or image_data_preprocess set to a template: {', '.join(TEMPLATES)}"
            )
        return parse_preprocess(data_preprocess_str)
    if template not in TEMPLATES:
        raise ConfigError(
            f"unknown image_data_preprocess template {template!r}; "
            f"valid: {', '.join((USER_DEFINED, *TEMPLATES))}"
        )
    if data_preprocess_str:
        logger.warning("image_data_preprocess=%s is used; data_preprocess_str is ignored", template)
    return parse_preprocess(TEMPLATES[template])
