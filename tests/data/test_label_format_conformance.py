"""One conformance test for every registered label format (``data.label_format``).

A format must read a file of its example lines (one or more labels per line, the same each
time), and turn a malformed line into one DataError naming the file, the line and what it
expected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant.data import LabelFormat, read_labels
from autoquant.errors import DataError
from autoquant.registry import LABEL_FORMATS


@pytest.mark.parametrize("name", LABEL_FORMATS.names())
def test_label_format_conforms(name: str, tmp_path: Path) -> None:
    label_format = LABEL_FORMATS.get(name)
    assert isinstance(label_format, LabelFormat)
    per_line = label_format.parse(label_format.example)
    assert per_line, f"{name}: the example line holds no label"

    path = tmp_path / "labels.txt"
    path.write_text(f"{label_format.example}\n" * 3, encoding="utf-8")
    labels = read_labels(path, name)
    assert labels == per_line * 3 == read_labels(path, name)

    path.write_text(f"{label_format.example}\nnot a label\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"labels.txt:2: bad {name} label 'not a label' ") as error:
        read_labels(path, name)
    assert str(error.value).endswith(f"; expected {label_format.expected}")
