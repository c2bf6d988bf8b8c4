"""Serving a kernel: the RSGI handler Granian calls, and the ASGI adapter for mounting.

Both ask the Rust core for a ready-made ``(status, headers, body)``; the only Python on the hot path is
the call into the core and the hand-off to the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple, Protocol

from . import _core
from .log import API_LOGGER

_access = logging.getLogger(API_LOGGER)
_errors = logging.getLogger("phoenix.app")


class _RSGIScope(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query_string(self) -> str: ...
    @property
    def headers(self) -> _core.HeaderLookup: ...


class _RSGIProtocol(Protocol):
    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...


RSGIHandler = Callable[[Any, Any], Awaitable[None]]


def _internal_error(core: _core.Core, method: str, path: str) -> _core.Response:
    """Any failure while answering becomes a logged, JSON 500: never a traceback sent to a client."""
    _errors.exception("%s %s failed", method, path)
    return core.error_response(500)


async def _after_round(core: _core.Core, method: str, path: str, scope: _core.Request) -> _core.Response:
    """Waits for the readiness round in flight, then answers from it. Every waiter awaits the same
    future, shielded so that one client going away cannot cancel it for the others."""
    await asyncio.shield(core.ready_round())
    return core.route_latest(method, path, scope)


async def _respond(core: _core.Core, method: str, path: str, scope: _core.Request) -> _core.Response:
    try:
        response = core.route(method, path, scope)
        if response is None:
            response = await _after_round(core, method, path, scope)
        return response
    except Exception:
        return _internal_error(core, method, path)


def rsgi_handler(core: _core.Core, *, request_log: bool) -> RSGIHandler:
    """The handler Granian calls. Its request log is written by the core (batched, off the GIL): a
    ``logging`` call per request would cost as much as serving it. It still honours the ``phoenix.api``
    logger's level, as it stands when the handler is built."""
    logged = request_log and _access.isEnabledFor(logging.INFO)
    core.log_requests(logged)
    timed = logged or core.metrics
    # `serve` times every answer it gives, counts it in the metrics and logs it, all in the core; only
    # the rare answers given here (after waiting for a round, or a 500) are reported from Python.
    route = core.serve if timed else core.route
    record_request = core.record_request

    # `_respond` inlined: an extra coroutine per request is a measurable share of a cache hit.
    async def handle(scope: _RSGIScope, proto: _RSGIProtocol) -> None:
        method = scope.method
        path = scope.path
        try:
            # The scope goes to the core whole: only readiness requests read its query and headers.
            response = route(method, path, scope)
            if response is None:
                waited = time.perf_counter()
                response = await _after_round(core, method, path, scope)
                if timed:
                    record_request(method, path, response[0], time.perf_counter() - waited)
        except Exception:
            response = _internal_error(core, method, path)
            if timed:
                # The failure's own traceback is logged by `_internal_error`; no latency to report.
                record_request(method, path, response[0], 0.0)
        # Unpacked, not `*response`: a plain vectorcall into Granian is cheaper than an argument tuple.
        status, headers, body = response
        proto.response_bytes(status, headers, body)

    return handle


Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _ASGIRequest(NamedTuple):
    """What the core reads off a readiness request, in the shape of Granian's RSGI scope."""

    query_string: str
    headers: dict[str, str]


class ASGIApp:
    """A kernel as an ASGI 3 application. Mounted under a prefix, it serves ``<prefix>/health`` and
    ``<prefix>/ready``; lifespan events start the kernel's background work."""

    def __init__(self, core: _core.Core, *, start: Callable[[], None], request_log: bool) -> None:
        self._core = core
        self._start_kernel = start
        self._request_log = request_log
        self._started = False

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    def _start(self) -> None:
        self._start_kernel()
        self._started = True

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._start()
                except Exception as exc:
                    # The server reports the message and does not serve: an app that cannot start
                    # must not claim it did, nor leave the server to guess from a traceback.
                    _errors.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Message, send: Send) -> None:
        # Apps mounted without lifespan support still get their background work started.
        if not self._started:
            self._start()
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        # Starlette keeps the full path and puts the mount prefix in root_path; others strip it.
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        started = time.perf_counter()
        method: str = scope["method"]
        request = _ASGIRequest(
            scope.get("query_string", b"").decode("latin-1"),
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
        )
        status, headers, body = await _respond(self._core, method, path, request)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - started
        self._core.record_request(method, path, status, elapsed)
        # Mounted in a host application, the request log goes through `logging` like the host's own.
        if self._request_log:
            _access.info("%s %s %d %.3fms", method, path, status, elapsed * 1000)
