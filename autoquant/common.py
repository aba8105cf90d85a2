"""The helpers every stage shares: the progress callback type, atomic file writes and stage timing."""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

T = TypeVar("T")

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


class Alongside(Generic[T]):
    """``work()`` on a daemon thread, started at once; :meth:`result` waits for it and returns its
    value or raises its exception. A daemon thread never holds up the process's exit (an error on
    the calling thread, or Ctrl-C, need not wait for the work)."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], T]) -> None:
        try:
            self._value = work()
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc

    def result(self) -> T:
        """The work's value, once it is done (its exception is raised here)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


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
    """The C library the process runs with, if it has ``malloc_trim`` (glibc). Looked up among
    the symbols already loaded: ``ctypes.util.find_library`` would start ``ldconfig``."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_memory() -> None:
    """Give the memory freed by a large model back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Freed blocks of a few MB, as a model's weights are, stay in the process's heap
    otherwise and count in its RSS until the heap's top is free."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
