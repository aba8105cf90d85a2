"""Serving a study over HTTP: the Desk that hands out trials and takes back scores, the HTTP API,
safe arrays on the wire, and the client (:mod:`autoquant.serve.client`, stdlib and numpy only).

The names below are imported on first use, so that ``import autoquant.serve.client`` stays light
(no onnxruntime, Optuna or FastAPI).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoquant.serve._arrays import InputSpec, PayloadError, decode_batch, encode_arrays
    from autoquant.serve._desk import Desk, NotHeld
    from autoquant.serve._drivers import serve_study
    from autoquant.serve._server import HttpServer, api_spec, check_binding, make_app
    from autoquant.serve._wire import AskState, DeskState

_HOMES = {
    "Desk": "_desk",
    "NotHeld": "_desk",
    "serve_study": "_drivers",
    "HttpServer": "_server",
    "api_spec": "_server",
    "check_binding": "_server",
    "make_app": "_server",
    "InputSpec": "_arrays",
    "PayloadError": "_arrays",
    "decode_batch": "_arrays",
    "encode_arrays": "_arrays",
    "AskState": "_wire",
    "DeskState": "_wire",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"autoquant.serve.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'autoquant.serve' has no attribute {name!r}")


__all__ = [
    "AskState",
    "Desk",
    "DeskState",
    "HttpServer",
    "InputSpec",
    "NotHeld",
    "PayloadError",
    "api_spec",
    "check_binding",
    "decode_batch",
    "encode_arrays",
    "make_app",
    "serve_study",
]
