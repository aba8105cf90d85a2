"""The HTTP API of ``autoquant serve``: a FastAPI app over a :class:`~autoquant.serve.Desk`,
served by uvicorn from a background thread.

Endpoints (the OpenAPI spec is served at ``/openapi.json``; ``docs/remote-api.json`` is a copy):

- ``POST /trials?wait=S``: the next trial, or ``wait`` / ``finished`` / ``stopped``;
- ``POST /trials/{id}/run``: a batch (``.npy`` or ``.npz`` body) through the trial's model; the
  outputs as an ``.npz`` named 0, 1, ...;
- ``POST /fp32/run``: the same through the FP32 model;
- ``POST /trials/{id}/report``: ``{"score": x}``;
- ``POST /trials/{id}/abandon``;
- ``GET /status``.

With a token, every request but ``/openapi.json`` needs ``Authorization: Bearer <token>``,
compared in constant time. Bodies over the size limit are refused with 413 before they are read
whole. Errors are ``{"detail": "one line"}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from autoquant.errors import ConfigError
from autoquant.names import VERSION as __version__
from autoquant.serve._arrays import PayloadError
from autoquant.serve._desk import Desk, NotHeld
from autoquant.serve._wire import Abandoned, Asked, Error, Reported, Score, Status

logger = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16
KEEP_ALIVE_S = 120  # a client's connection stays open while it computes its metric between batches
NPZ = "application/octet-stream"
_BEARER = HTTPBearer(auto_error=False, description="the server's token (autoquant serve: AUTOQUANT_TOKEN)")
_BINARY = {"schema": {"type": "string", "format": "binary"}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error, "description": text}
    for status, text in {
        401: "a missing or wrong token",
        413: "the body is over the size limit",
    }.items()
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        400: "a malformed body (.npy/.npz, or JSON)",
        404: "no such trial was handed out",
        409: "the trial is no longer out (reported, abandoned or timed out)",
        422: "a payload the model does not take (dtype, shape, NaN), or a bad parameter",
    }
    return {**_ERRORS, **{s: {"model": Error, "description": texts[s]} for s in statuses}}


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "an .npy file (a model with one input) or an .npz archive of arrays named after the inputs",
        "content": {NPZ: _BINARY},
    }
}
_OUTPUTS = {
    200: {"description": "the outputs, an .npz archive with members 0, 1, ...", "content": {NPZ: _BINARY}}
}


# ---- the app ---------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413, by its Content-Length
    or, without one (chunked), as soon as more has arrived."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "the Content-Length header is not a number")
                return
            if declared > self.limit:
                await _answer(send, 413, self._message(declared))
                return
        received, overflowed, started = 0, False, False

        async def limited() -> dict:
            # Past the limit the app is told the client left: whatever it answers then is replaced.
            nonlocal received, overflowed
            if overflowed:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    overflowed = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict) -> None:
            nonlocal started
            if overflowed:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not overflowed:
                raise
        if overflowed and not started:
            await _answer(send, 413, self._message(None))

    def _message(self, size: int | None) -> str:
        what = f"the body is {size} bytes" if size is not None else "the body is larger"
        return f"{what}, over the server's limit of {self.limit} bytes (autoquant serve --max-body-mb)"


async def _answer(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def make_app(desk: Desk, token: str | None, max_body: int) -> FastAPI:
    """The API over ``desk``; ``token`` None serves without authentication (loopback only)."""
    app = FastAPI(
        title="autoquant serve",
        version=__version__,
        description="Remote evaluation of an autoquant study: ask for a trial, run batches through "
        "its INT8 model, report the score your own code computed.",
        docs_url=None,
        redoc_url=None,
    )

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a missing or wrong token", headers={"WWW-Authenticate": "Bearer"})

    _add_error_handlers(app)
    for router in (_batch_routes(desk), _score_routes(desk)):
        app.include_router(router, dependencies=[Depends(authorized)])
    app.add_middleware(BodyLimit, limit=max_body)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": "one line"}`` with its status."""

    @app.exception_handler(PayloadError)
    async def payload_error(request: Request, exc: PayloadError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(NotHeld)
    async def not_held(request: Request, exc: NotHeld) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)


#: The ask answer's links (OpenAPI): the trial's id goes into the URLs of its endpoints.
_LINKS = {
    name: {"operationId": operation, "parameters": {"trial_id": "$response.body#/trial/id"}}
    for name, operation in (("Run", "run_trial"), ("Report", "report_trial"), ("Abandon", "abandon_trial"))
}


def _batch_routes(desk: Desk) -> APIRouter:
    """Ask for a trial; run batches through its model or the FP32 model."""
    router = APIRouter()

    @router.post(
        "/trials",
        response_model=Asked,
        operation_id="ask_trial",
        responses={200: {"links": _LINKS}, **_errors(422)},
    )
    def ask(
        request: Request,
        wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for a trial")] = 10.0,
        client: Annotated[str | None, Header(alias="X-Autoquant-Client", max_length=200)] = None,
    ) -> Asked:
        """Ask for the next trial: the FP32 model first (unless its score is known), then INT8 trials."""
        who = client or (f"{request.client.host}:{request.client.port}" if request.client else "a client")
        return desk.ask(who, wait)

    @router.post(
        "/trials/{trial_id}/run",
        operation_id="run_trial",
        response_class=Response,
        responses={**_OUTPUTS, **_errors(400, 404, 409, 422)},
        openapi_extra=_BATCH_BODY,
    )
    async def run(trial_id: str, request: Request) -> Response:
        """Run one batch through the trial's model."""
        body = await request.body()
        return Response(await run_in_threadpool(desk.run, trial_id, body), media_type=NPZ)

    @router.post(
        "/fp32/run",
        operation_id="run_fp32",
        response_class=Response,
        responses={**_OUTPUTS, **_errors(400, 409, 422)},
        openapi_extra=_BATCH_BODY,
    )
    async def run_fp32(request: Request) -> Response:
        """Run one batch through the FP32 model."""
        body = await request.body()
        return Response(await run_in_threadpool(desk.run_fp32, body), media_type=NPZ)

    return router


def _score_routes(desk: Desk) -> APIRouter:
    """The study's status; report a trial's score or abandon it."""
    router = APIRouter()

    @router.get("/status", response_model=Status, operation_id="status", responses=_errors())
    def status() -> Status:
        """The study: its state, the trials out with clients, the best so far."""
        return desk.status()

    @router.post(
        "/trials/{trial_id}/report",
        response_model=Reported,
        operation_id="report_trial",
        responses=_errors(400, 404, 409, 422),
    )
    def report(trial_id: str, score: Score) -> Reported:
        """Report the trial's score."""
        return desk.report(trial_id, score.score)

    @router.post(
        "/trials/{trial_id}/abandon",
        response_model=Abandoned,
        operation_id="abandon_trial",
        responses=_errors(404, 409),
    )
    def abandon(trial_id: str) -> Abandoned:
        """Give the trial back without a score: it is handed out again."""
        return desk.abandon(trial_id)

    return router


def check_binding(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token, and a short token.

    Raises:
        ConfigError: One line saying what to do.
    """
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the token is {len(token)} characters; use at least {MIN_TOKEN_LENGTH}, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if token is None and not _loopback(host):
        raise ConfigError(
            f"--host {host} is reachable from other machines: set a token in AUTOQUANT_TOKEN or --token-file"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpServer:
    """uvicorn serving an app on ``host:port`` (0: a free port) from a background thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by the accepted connections (Linux): a response's headers and body go out at
        # once, not 40 ms apart behind the client's delayed ACK on a kept-alive connection.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=KEEP_ALIVE_S
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="autoquant-http", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise ConfigError(f"the HTTP server on {self.url} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self.socket.close()


def api_spec() -> dict:
    """The OpenAPI spec of the API (``python -m autoquant.serve`` prints it: docs/remote-api.json)."""
    return make_app(None, "-" * MIN_TOKEN_LENGTH, 1).openapi()  # type: ignore[arg-type]
