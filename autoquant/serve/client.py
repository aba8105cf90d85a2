"""The client of ``autoquant serve``, for the user's own training environment.

It needs only the standard library and numpy (this file can be copied on its own); one
kept-alive connection per thread::

    from autoquant.serve.client import RemoteTuner

    for trial in RemoteTuner("http://127.0.0.1:8765", token=...):
        metric = MyMetric()
        for inputs, labels in loader:
            metric.update(trial.run(inputs), labels)
        trial.report(metric.score())

The first trial is the FP32 model (``trial.fp32``) unless the study knows its score. A trial the
loop leaves without a report (``break``, an exception) is abandoned, so the server hands it out
again at once; a client that disappears has its trial handed out again after the server's
``--trial-timeout``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["RemoteError", "RemoteTrial", "RemoteTuner"]


class RemoteError(RuntimeError):
    """The server refused a request (``status`` is its HTTP status, 0 when it was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _Connection:
    """HTTP to the server over a kept-alive connection per thread (a new TCP connection per batch
    would cost milliseconds)."""

    def __init__(self, url: str, token: str | None, timeout: float, name: str) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// address")
        self._kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host, self._port, self._base = parts.hostname, parts.port, parts.path
        self._local = threading.local()
        self.headers = {"X-Autoquant-Client": name}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def _open(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._kind(self._host, self._port, timeout=self.timeout)
            connection.connect()
            # Headers and a large body go out in two writes: without this, Nagle's algorithm holds
            # the body until the server's delayed ACK, 40 ms per request.
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def call(self, method: str, path: str, body: bytes | None = None, json_body: Any = None) -> Any:
        headers = dict(self.headers)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        for attempt in range(2):
            try:
                connection = self._open()
                connection.request(method, self._base + path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop()  # a kept-alive connection the server had closed: once more on a new one
                if attempt:
                    raise RemoteError(
                        f"the autoquant server at {self.url} closed the connection: {exc}"
                    ) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise RemoteError(f"cannot reach the autoquant server at {self.url}: {exc}") from None
        if response.status >= 400:
            raise RemoteError(
                f"{method} {path}: {response.status} {_detail(data, response.reason)}", response.status
            )
        kind = response.getheader("Content-Type", "")
        return json.loads(data) if kind.startswith("application/json") else data


def _detail(data: bytes, reason: str) -> str:
    try:
        return str(json.loads(data).get("detail", reason))
    except (ValueError, AttributeError):
        return reason


def _encode(batch: dict[str, np.ndarray] | np.ndarray, inputs: list[dict] | None = None) -> bytes:
    """One array as .npy, a dict as .npz; with ``inputs``, arrays are cast within their kind
    (float64 to float32, int32 to int64) to the input's dtype."""
    dtypes = {i["name"]: np.dtype(i["dtype"]) for i in inputs or ()}
    if not isinstance(batch, dict) and len(dtypes) == 1:
        batch = {next(iter(dtypes)): batch}
    if not isinstance(batch, dict):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(batch), allow_pickle=False)
        return buffer.getvalue()
    arrays = {}
    for name, value in batch.items():
        array = np.asarray(value)
        want = dtypes.get(name)
        if want is not None and array.dtype != want and array.dtype.kind == want.kind:
            array = array.astype(want)
        arrays[name] = np.ascontiguousarray(array)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _decode(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return [archive[str(i)] for i in range(len(archive.files))]


class RemoteTrial:
    """One model to evaluate: :meth:`run` batches through it, then :meth:`report` the score.

    Attributes:
        number: The Optuna trial number (-1 for the FP32 model).
        fp32: True for the FP32 model.
        params: The quantization choices.
        inputs: ``[{"name", "dtype", "shape"}]`` of the model inputs.
        outputs: The output names, in the order :meth:`run` returns them.
        score: What :meth:`report` sent; ``result`` what the server answered (decay, within_budget).
    """

    def __init__(self, connection: _Connection, info: dict) -> None:
        self._connection = connection
        self.id: str = info["id"]
        self.number: int = info["number"]
        self.fp32: bool = info["fp32"]
        self.params: dict = info["params"]
        self.inputs: list[dict] = info["inputs"]
        self.outputs: list[str] = info["outputs"]
        self.score: float | None = None
        self.result: dict | None = None
        self.abandoned = False

    def run(self, batch: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """The model's outputs for one batch: a dict of input arrays, or one array for one input."""
        data = self._connection.call("POST", f"/trials/{self.id}/run", body=_encode(batch, self.inputs))
        return _decode(data)

    def report(self, score: float) -> dict:
        """Send the score your code computed (higher is better); returns its decay and whether it
        is within the budget."""
        self.result = self._connection.call(
            "POST", f"/trials/{self.id}/report", json_body={"score": float(score)}
        )
        self.score = float(score)
        return self.result

    def abandon(self) -> None:
        """Give the trial back unscored: the server hands it out again."""
        if self.score is None and not self.abandoned:
            self._connection.call("POST", f"/trials/{self.id}/abandon")
            self.abandoned = True

    def __repr__(self) -> str:
        what = "FP32" if self.fp32 else f"#{self.number}"
        return f"RemoteTrial({what}, {self.params})"


class RemoteTuner:
    """Iterate over the trials a server hands out, until its study is done.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8765``.
        token: Its token (default: the ``AUTOQUANT_TOKEN`` environment variable).
        timeout: Seconds to wait for one HTTP answer.
        name: How the server names this client (default: host:pid).
        retry_for: Seconds to keep asking a server that cannot be reached (not started yet, or
            restarting) before giving up.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 120.0,
        name: str | None = None,
        retry_for: float = 60.0,
    ) -> None:
        self.retry_for = retry_for
        token = token if token is not None else os.environ.get("AUTOQUANT_TOKEN") or None
        self._connection = _Connection(url, token, timeout, name or f"{socket.gethostname()}:{os.getpid()}")
        self.state: str | None = None  # finished or stopped, once the iteration ends
        self.reason = ""

    def __iter__(self) -> Iterator[RemoteTrial]:
        while True:
            asked = self._ask()
            if asked["state"] == "wait":
                continue
            if asked["state"] != "trial":
                self.state, self.reason = asked["state"], asked.get("reason", "")
                return
            trial = RemoteTrial(self._connection, asked["trial"])
            try:
                yield trial
            except BaseException:  # the loop left early (break, an exception): hand it back now
                with contextlib.suppress(RemoteError):
                    trial.abandon()
                raise
            if trial.score is None:
                trial.abandon()
                raise RemoteError(f"trial {trial.number} ended without trial.report(score); it was abandoned")

    def _ask(self) -> dict:
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                return self._connection.call(
                    "POST", "/trials?" + urllib.parse.urlencode({"wait": 10}), body=b""
                )
            except RemoteError as exc:
                if exc.status != 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def status(self) -> dict:
        """The study: state, trials out with clients, the best so far."""
        return self._connection.call("GET", "/status")

    def run_fp32(self, batch: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """The FP32 model's outputs for one batch (arrays of the inputs' dtypes)."""
        return _decode(self._connection.call("POST", "/fp32/run", body=_encode(batch)))
