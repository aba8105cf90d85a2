"""Calibration and test data: readers for image lists, .npy/.npz, LMDB and Python callables.

Use :func:`open_reader` with a data config section and the model inputs; iterate the reader for
:class:`Sample` objects or call ``reader.batches(n)`` for stacked :class:`Batch` objects.
"""

from autoquant.data._base import (
    Batch,
    DataReader,
    InputSpec,
    Sample,
    count_nonfinite,
    detect_format,
    open_reader,
    register_reader,
    registered_readers,
)
from autoquant.data._callable import CallableReader
from autoquant.data._images import ImageReader, list_images
from autoquant.data._labels import Box, LabelFormat, format_boxes, parse_boxes, read_labels
from autoquant.data._lmdb import LmdbReader, LmdbWriter
from autoquant.data._numpy import NumpyReader
from autoquant.data._preprocess import TEMPLATES

__all__ = [
    "TEMPLATES",
    "Batch",
    "Box",
    "CallableReader",
    "DataReader",
    "ImageReader",
    "InputSpec",
    "LabelFormat",
    "LmdbReader",
    "LmdbWriter",
    "NumpyReader",
    "Sample",
    "count_nonfinite",
    "detect_format",
    "format_boxes",
    "list_images",
    "open_reader",
    "parse_boxes",
    "read_labels",
    "register_reader",
    "registered_readers",
]
