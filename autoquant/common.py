"""The two helpers every stage shares: the progress callback type and atomic file writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Called with the number of samples (or steps) just done.
ProgressFn = Callable[[int], None]


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file whole or not at all: ``write`` fills a temporary file beside ``path``, which
    then replaces ``path`` in one ``os.replace``; on any failure the temporary file is removed.

    Raises:
        OSError: The folder cannot be written (the caller names the file's purpose).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
