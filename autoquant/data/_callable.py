"""Samples produced by a user function: ``module:function`` or ``/path/file.py:function``.

The function takes no arguments and returns an iterable (a list, a generator, a DataLoader...).
Each item is an array (single-input models), a mapping input name -> array, or a tuple
``(inputs, label)``. Arrays whose rank equals the model input rank are stacks of samples and are
split; their label is then a sequence with one label per sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoquant.data._base import DataReader, Sample, register_reader
from autoquant.data._numpy import count_samples, split_samples
from autoquant.errors import DataError
from autoquant.usercode import code_file, is_code_spec, load_callable


def _as_arrays(inputs: Any, name: str | None, where: str) -> dict[str, Any]:
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if name is None:
        raise DataError(
            f"{where}: a multi-input model needs a mapping input name -> array, got {type(inputs).__name__}"
        )
    return {name: inputs}


def _split_labels(label: Any, size: int | None, where: str) -> list[Any]:
    """One label per sample: ``[label]`` for one sample, the label sequence split for a stack."""
    if isinstance(label, np.ndarray | np.generic):
        label = label.tolist()
    if size is None or label is None:
        return [label] * (size or 1)
    labels = list(label) if isinstance(label, Iterable) and not isinstance(label, str | bytes) else [label]
    if len(labels) != size:
        raise DataError(f"{where}: a stack of {size} samples needs {size} labels, got {label!r}")
    return labels


@register_reader("callable")
class CallableReader(DataReader):
    """Samples from the iterable a user function returns; it is called once per pass over the data.

    The size is not known in advance: ``len()`` counts by one extra pass (calling the function
    again, holding one item at a time) and stops at ``limit``. An empty result is reported when
    iteration ends.
    """

    expects = "module:function or /path/file.py:function"

    @classmethod
    def claims(cls, source: str) -> bool:
        """A ``file.py:function`` spec, or ``module:function`` that is not a path."""
        return code_file(source) is not None or (is_code_spec(source) and not Path(source).exists())

    def _open(self) -> None:
        if self.config.labels is not None:
            raise DataError(
                f"{self.config.labels}: a callable source gives its own labels; "
                f"yield (inputs, label) tuples from {self.source} instead of setting labels"
            )
        self._function = load_callable(self.source, "data source", DataError)

    def _count(self) -> int | None:
        return None

    def _items(self) -> Iterator[Any]:
        try:
            items = self._function()
        except TypeError as exc:
            raise DataError(f"{self.source}: calling it with no arguments failed ({exc})") from exc
        try:
            return iter(items)
        except TypeError:
            raise DataError(
                f"{self.source}: returned {type(items).__name__}, expected an iterable of samples"
            ) from None

    def _samples(self) -> Iterator[Sample]:
        single = self.inputs[0].name if len(self.inputs) == 1 else None
        for number, item in enumerate(self._items()):
            where = f"{self.source}#{number}"
            inputs, label = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
            arrays = {key: np.asarray(value) for key, value in _as_arrays(inputs, single, where).items()}
            if set(arrays) != {spec.name for spec in self.inputs}:
                yield Sample(arrays, label, where)  # the base reports the names
                continue
            size = count_samples({key: value.shape for key, value in arrays.items()}, self.inputs, where)
            labels = _split_labels(label, size, where)
            for index, (sample_id, sample) in enumerate(split_samples(arrays, self.inputs, where)):
                yield Sample(sample, labels[index], sample_id)
