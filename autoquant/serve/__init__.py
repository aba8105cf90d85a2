"""Serving a study over HTTP: the Desk that hands out trials and takes back scores, the HTTP API,
safe arrays on the wire, and the client (:mod:`autoquant.serve.client`, stdlib and numpy only).

The names below are imported on first use, so that ``import autoquant.serve.client`` stays light
(no onnxruntime, Optuna or FastAPI).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoquant.serve._desk import Desk, NotHeld, serve_study
    from autoquant.serve._server import HttpServer, check_binding, make_app
    from autoquant.serve._wire import InputSpec, PayloadError, decode_batch, encode_arrays

_HOMES = {
    "Desk": "_desk",
    "NotHeld": "_desk",
    "serve_study": "_desk",
    "HttpServer": "_server",
    "check_binding": "_server",
    "make_app": "_server",
    "InputSpec": "_wire",
    "PayloadError": "_wire",
    "decode_batch": "_wire",
    "encode_arrays": "_wire",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"autoquant.serve.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'autoquant.serve' has no attribute {name!r}")


__all__ = [
    "Desk",
    "HttpServer",
    "InputSpec",
    "NotHeld",
    "PayloadError",
    "check_binding",
    "decode_batch",
    "encode_arrays",
    "make_app",
    "serve_study",
]
