"""Label files in the seed tool's ``data.label`` format.

Classification: one integer class per line. A line may also hold the comma-separated labels of a
batched LMDB record (``3,13,4,6``, optionally in ``[...]`` as written by ``json.dumps``); they are
flattened, one label per sample.

Detection: one line per sample, ``cls,x1,y1,x2,y2`` boxes separated by ``;``; an empty line is a
sample without boxes.

Each format is a :class:`LabelFormat` registered in :data:`autoquant.registry.LABEL_FORMATS`
(the ``data.label_format`` values); adding one is a change to this file, and the conformance
test (``tests/data/test_label_format_conformance.py``) runs over every registered format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoquant.errors import DataError
from autoquant.registry import LABEL_FORMATS, Registry


@dataclass(frozen=True)
class LabelFormat:
    """How one line of a label file turns into labels.

    Attributes:
        parse: ``parse(line) -> labels``, one label per sample the line holds; raises ValueError
            on a malformed line.
        expected: What a line should hold, for the message about a malformed one.
        example: A valid line.
    """

    parse: Callable[[str], list[Any]]
    expected: str
    example: str


FORMATS: Registry[LabelFormat] = LABEL_FORMATS


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


def _parse_detection(line: str) -> list[Any]:
    return [parse_boxes(line)]  # one sample per line


FORMATS.add("classification", LabelFormat(_parse_classes, "one integer", "3"))
FORMATS.add(
    "detection", LabelFormat(_parse_detection, "cls,x1,y1,x2,y2;...", "4,258,98,505,234;17,1,137,97.5,502")
)


def read_labels(path: str | Path, label_format: str = "classification") -> list[Any]:
    """Read a label file, one entry per sample in data order.

    Args:
        path: The label file.
        label_format: A registered label format: ``"classification"`` (ints) or ``"detection"``
            (lists of :class:`Box`).

    Returns:
        One ``int`` or one ``list[Box]`` per sample.

    Raises:
        DataError: The format is not registered, the file cannot be read or a line is malformed
            (the message names file:line).
    """
    parser = FORMATS.get(label_format)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the label file ({exc})") from None
    labels: list[Any] = []
    for number, line in enumerate(lines, start=1):
        try:
            labels.extend(parser.parse(line))
        except ValueError as exc:
            raise DataError(
                f"{path}:{number}: bad {label_format} label {line!r} ({exc}); expected {parser.expected}"
            ) from None
    return labels
