"""The helpers every stage shares: the progress callback type, atomic file writes and stage timing."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a write into an open file names none: name the file meant
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def timed(into: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to ``into[name]``, also when it raises."""
    began = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - began


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_memory() -> None:
    """Give the memory freed by a large model back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Freed blocks of a few MB, as a model's weights are, stay in the process's heap
    otherwise and count in its RSS until the heap's top is free."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
