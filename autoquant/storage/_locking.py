"""One ``tune`` per output folder: a lock file naming the process that holds it.

The lock is ``.autoquant.lock`` in the output folder, created atomically (``O_EXCL``) with the
holder's host, pid and start time. A lock left by a process that no longer runs on this host
(SIGKILL, a crash) is stale and taken over with a warning. A lock held on another host cannot be
checked; the message says which file to delete if that host's process is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from autoquant.errors import SearchError
from autoquant.names import LOCK_FILE

logger = logging.getLogger(__name__)


def process_alive(pid: int, since: float | None = None) -> bool:
    """Whether a process of this host with ``pid`` exists (under any user).

    Args:
        pid: The process id.
        since: When the process was known to run (a Unix time): a process with this pid that
            started later is another one, which reuses the pid of a dead process (read from
            ``/proc`` where there is one; elsewhere any process with this pid counts).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    started = None if since is None else _start_time(pid)
    return started is None or started <= since + _START_SLACK_S


#: How much later than ``since`` a process may seem to have started and still be the same one:
#: the start time is the boot time (whole seconds, moved by clock steps and suspends) plus clock
#: ticks. Taking a live process for dead is the worse mistake; a pid reused within a minute of
#: its record is rare, and then the heartbeat's grace period still decides.
_START_SLACK_S = 60.0


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (a Unix time), from Linux's ``/proc``; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text(encoding="ascii").splitlines()
            if line.startswith("btime ")
        )
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _create(path: Path) -> bool:
    """Create the lock file with our identity; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
    except BaseException:  # a full disk: leave no empty lock file for the next run to wait on
        path.unlink(missing_ok=True)
        raise
    return True


@contextlib.contextmanager
def output_lock(directory: Path, what: str) -> Iterator[None]:
    """Hold the lock of an output folder for the duration of the block.

    Args:
        directory: The output folder; created if needed, and removed again on exit if the lock
            was all that was in it (a run that failed before writing anything leaves nothing).
        what: The study, for the message.

    Raises:
        SearchError: Another live process holds the lock.
    """
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    while not _create(path):
        holder = _holder(path)
        if holder is None:  # being written this instant, or left empty by a crash
            time.sleep(0.1)
            holder = _holder(path)
            if holder is None and _age(path) > 5.0:
                logger.warning("removing the unreadable lock file %s", path)
                path.unlink(missing_ok=True)
                continue
        here = holder is not None and holder.get("host") == socket.gethostname()
        if holder is not None and here and not process_alive(int(holder.get("pid", 0))):
            logger.warning("taking over the stale lock of process %s (no longer running)", holder.get("pid"))
            path.unlink(missing_ok=True)
            continue
        who = (
            f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
            if holder
            else "another process"
        )
        hint = "wait for it or stop it" if here else f"if that process is gone, delete {path}"
        raise SearchError(f"{directory}: {what} is already being tuned by {who}; {hint}")
    try:
        yield
    finally:
        if (_holder(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):  # only when empty
                directory.rmdir()
