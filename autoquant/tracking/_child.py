"""The machinery under the tracker: one background thread that makes calls in order, and the
child process (`autoquant.tracking._process`) that makes the MLflow calls for it."""

from __future__ import annotations

import contextlib
import logging
import pickle
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any


class Background:
    """Runs calls in order on one daemon thread, started when there is work and ended when idle.

    A daemon thread, not an executor's: the interpreter joins an executor's threads at exit, so a
    Ctrl-C while mlflow is being imported or a run is being logged would wait for that. The calls
    still queued when the process exits are dropped; `MlflowTracker.finish` waits for them.
    """

    idle_s = 5.0

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: deque[tuple[Future, Callable[[], Any]]] = deque()
        self._ready = threading.Condition()
        self._running = False

    def submit(self, call: Callable[[], Any]) -> Future:
        """Queue ``call``; its future holds its result or its exception."""
        future: Future = Future()
        with self._ready:
            self._calls.append((future, call))
            if self._running:
                self._ready.notify()
            else:
                self._running = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                if not self._calls:
                    self._ready.wait(self.idle_s)
                if not self._calls:
                    self._running = False
                    return
                future, call = self._calls.popleft()
            if not future.set_running_or_notify_cancel():  # cancelled by a finish that gave up
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to whoever waits for the future
                future.set_exception(exc)
            else:
                future.set_result(result)


class LoggingProcess:
    """The process that makes the MLflow calls (`autoquant.tracking._process`), called from the
    background thread only. It starts importing mlflow at once; it is not waited for at exit."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._ended: str | None = None

    def start(self) -> None:
        """Start the process (it imports mlflow while the study calibrates)."""
        # The same autoquant as this process's (a checkout's too), never one in the working folder:
        # this file is <root>/autoquant/tracking/_child.py.
        root = str(Path(__file__).resolve().parents[2])
        code = (
            f"import sys; r = {root!r}; r in sys.path or sys.path.insert(0, r); "
            "from autoquant.tracking._process import main; main()"
        )
        levels = [str(logging.getLogger(name).getEffectiveLevel()) for name in ("", "autoquant")]
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-c", code, *levels],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its errors come back as answers; it holds none of our streams
            start_new_session=True,  # Ctrl-C is the study process's to handle
        )

    def call(self, method: str, *args: Any) -> Any:
        """Run ``MlflowLogger.method(*args)`` in the process; its log records are logged here.

        Raises:
            RuntimeError: The call failed (the message names MLflow's error), or the process ended.
        """
        if self._process is None:
            self.start()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        if self._ended is None:
            try:
                pickle.dump((method, args), process.stdin)
                process.stdin.flush()
                ok, value, records = pickle.load(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                try:
                    status: int | None = process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    status = None
                self._ended = f"MLflow's logging process ended (exit status {status})"
        if self._ended is not None:
            raise RuntimeError(self._ended)
        for name, level, text in records:
            logging.getLogger(name).log(level, "%s", text)
        if not ok:
            raise RuntimeError(f"MLflow: {value}")
        return value

    def close(self) -> None:
        """Close the process's input: it ends after its current call, unwaited for."""
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
