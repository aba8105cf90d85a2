"""Label files in the seed tool's ``data.label`` format.

Classification: one integer class per line. A line may also hold the comma-separated labels of a
batched LMDB record (``3,13,4,6``, optionally in ``[...]`` as written by ``json.dumps``); they are
flattened, one label per sample.

Detection: one line per sample, ``cls,x1,y1,x2,y2`` boxes separated by ``;``; an empty line is a
sample without boxes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoquant.errors import DataError

LABEL_FORMATS = ("classification", "detection")


@dataclass(frozen=True)
class Box:
    """One ground-truth box: class id and corner coordinates."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


def parse_boxes(line: str) -> list[Box]:
    """Parse ``cls,x1,y1,x2,y2;cls,x1,y1,x2,y2;...`` (empty: no boxes).

    Raises:
        ValueError: A box does not have five numbers or its class is not an integer.
    """
    boxes = []
    for item in filter(None, (part.strip() for part in line.split(";"))):
        fields = [field.strip() for field in item.split(",")]
        if len(fields) != 5:
            raise ValueError(f"box {item!r} must be cls,x1,y1,x2,y2")
        cls, *coords = fields
        boxes.append(Box(int(cls), *(float(value) for value in coords)))
    return boxes


def format_boxes(boxes: Iterable[Box]) -> str:
    """Write boxes as one ``data.label`` detection line."""
    return ";".join(f"{box.cls},{box.x1},{box.y1},{box.x2},{box.y2}" for box in boxes)


def _parse_classes(line: str) -> list[int]:
    text = line.strip().removeprefix("[").removesuffix("]")
    values = [part.strip() for part in text.split(",")]
    if not text or not all(values):
        raise ValueError("expected an integer class label")
    return [int(value) for value in values]


def read_labels(path: str | Path, label_format: str = "classification") -> list[Any]:
    """Read a label file, one entry per sample in data order.

    Args:
        path: The label file.
        label_format: ``"classification"`` (ints) or ``"detection"`` (lists of :class:`Box`).

    Returns:
        One ``int`` or one ``list[Box]`` per sample.

    Raises:
        DataError: The file cannot be read or a line is malformed (the message names file:line).
    """
    if label_format not in LABEL_FORMATS:
        raise DataError(f"unknown label_format {label_format!r}; valid: {', '.join(LABEL_FORMATS)}")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the label file ({exc})") from None
    labels: list[Any] = []
    for number, line in enumerate(lines, start=1):
        try:
            if label_format == "detection":
                labels.append(parse_boxes(line))
            else:
                labels.extend(_parse_classes(line))
        except ValueError as exc:
            example = "cls,x1,y1,x2,y2;..." if label_format == "detection" else "one integer"
            raise DataError(
                f"{path}:{number}: bad {label_format} label {line!r} ({exc}); expected {example}"
            ) from None
    return labels
