"""Samples decoded from image files listed in an ``ImageList.txt`` or found in a folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from autoquant.data._base import DataReader, Sample, file_or_folder_of, files_with, register_reader
from autoquant.data._preprocess import resolve_preprocess
from autoquant.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(source: str | Path) -> list[Path]:
    """The image files of an image list or a folder, in data order.

    A list holds one path per line, relative to the list's folder; blank lines and lines starting
    with ``#`` are ignored. A folder contributes its files with image suffixes, sorted by name.

    Raises:
        DataError: The source is missing or unreadable.
    """
    path = Path(source)
    if path.is_dir():
        return files_with(path, IMAGE_SUFFIXES)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{source}: no such image list or folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{source}: cannot read the image list ({exc})") from None
    entries = (line.strip() for line in lines)
    return [path.parent / entry for entry in entries if entry and not entry.startswith("#")]


@register_reader("images")
class ImageReader(DataReader):
    """Images decoded and preprocessed one at a time for a single-input model.

    The preprocessing comes from ``data_preprocess_str`` or the ``image_data_preprocess`` template.
    With ``on_decode_error: skip`` an image that cannot be read, decoded or preprocessed is logged
    and skipped together with its label; ``len()`` then counts the listed images and is an upper
    bound. With ``stop`` (the default) the first such image raises :class:`DataError`.
    """

    expects = "an image list (.txt) or a folder of image files"

    @classmethod
    def claims(cls, source: str) -> bool:
        """A ``.txt`` file, or a folder holding image files."""
        return file_or_folder_of(source, (".txt",), IMAGE_SUFFIXES)

    def _open(self) -> None:
        if len(self.inputs) != 1:
            names = [spec.name for spec in self.inputs]
            raise DataError(
                f"{self.source}: images feed one model input, the model has {len(names)} ({names}); "
                "use .npz files, an LMDB or a callable for multi-input models"
            )
        self._preprocess = resolve_preprocess(
            self.config.data_preprocess_str, self.config.image_data_preprocess
        )
        self._files = list_images(self.source)

    def _count(self) -> int | None:
        return len(self._files)

    def _samples(self) -> Iterator[Sample]:
        name = self.inputs[0].name
        for index, file in enumerate(self._files):
            try:
                array = self._preprocess(file)
            except DataError as exc:
                if self.config.on_decode_error == "stop":
                    raise
                logger.warning("skipping image (on_decode_error=skip): %s", exc)
                continue
            yield Sample({name: array}, self._label(index), str(file))
