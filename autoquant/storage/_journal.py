"""An Optuna journal file after a fault: a full disk or a kill in the middle of an append leaves a
record without its line end. Optuna skips such a last record when it reads, but the next append
would be glued onto it, and the journal would no longer read. The half-written record (never a
whole one) is cut off before the journal is opened, with one line saying so."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.storages.journal import JournalStorage

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16


def _ends_whole(path: Path) -> bool:
    """Whether the journal is empty or ends with a line end (no half-written record)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return True
            f.seek(size - 1)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True


def _last_line_end(path: Path) -> int:
    """The length the journal has up to and with its last line end (0 if it has none)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            found = f.read(end - start).rfind(b"\n")
            if found >= 0:
                return start + found + 1
            end = start
    return 0


def open_journal(path: Path) -> JournalStorage:
    """Optuna's journal storage on ``path``, its half-written last record cut off first (under the
    journal's own lock, which every writer takes to append)."""
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental in some Optuna versions
        lock = JournalFileSymlinkLock(str(path))
    if not _ends_whole(path):
        lock.acquire()  # a lock left by a killed process is taken over after its grace period
        try:
            if not _ends_whole(path):
                keep = _last_line_end(path)
                cut = path.stat().st_size - keep
                os.truncate(path, keep)
                logger.info(
                    "the study journal %s ended in a half-written record (an interrupted write); "
                    "cut off its %d bytes",
                    path,
                    cut,
                )
        finally:
            with contextlib.suppress(RuntimeError):
                lock.release()
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
