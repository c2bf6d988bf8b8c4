"""The pure-Python baseline for the micro-benchmarks: Phoenix's core, written the way one would in Python.

:class:`PurePythonCore` answers the calls the benchmarks make on ``phoenix._core.Core`` (``route``,
``ready_round``, ``route_latest``, ``check``, ``error_response``, ``add_ping``) with the same semantics
and the same bodies, built from the obvious parts: a dict of entries with a ``time.monotonic`` TTL, an
``asyncio`` task per round as the single flight (and as the one future its waiters share),
``asyncio.gather`` with a ``wait_for`` deadline per check, and ``json.dumps``. Like the core, a
readiness request reads its query and ``Accept`` header, but only the default JSON answer with full
details is implemented. It leaves out what the benchmarks never exercise (the other formats and paths,
Python checks run in threads, warn thresholds, joining a hung check's earlier run, draining, the
request log), none of which would make it faster.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

Response = tuple[int, list[tuple[str, str]], bytes]
# born (time.monotonic()), the GET response, the HEAD response
Entry = tuple[float, Response, Response]

JSON_HEADERS = [("content-type", "application/json")]
NOT_ALLOWED_HEADERS = [*JSON_HEADERS, ("allow", "GET, HEAD")]
HEALTH_JSON = "application/health+json"
REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HeaderLookup(Protocol):
    """Request headers by lower-case name (``phoenix._core.HeaderLookup``)."""

    def get(self, name: str, /) -> str | None: ...


class Request(Protocol):
    """What the core reads off a readiness request (``phoenix._core.Request``): Granian's RSGI scope
    has both."""

    @property
    def query_string(self) -> str: ...
    @property
    def headers(self) -> HeaderLookup: ...


def timestamp() -> str:
    """RFC 3339 in UTC with millisecond precision, as the core writes it: ``2026-11-27T08:50:54.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


# Built once: `json.dumps` with any non-default argument builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dumps(value: Any) -> bytes:
    """Compact JSON, like serde_json's output."""
    return _ENCODER.encode(value).encode()


@dataclass(frozen=True)
class Check:
    name: str
    measurement: str
    func: Callable[[], Awaitable[float]]
    threshold: float
    timeout_ms: int


async def ping() -> float:
    return 1.0


class PurePythonCore:
    """The subset of ``phoenix._core.Core`` that the benchmarks call, in pure Python."""

    def __init__(
        self, health_ttl_ms: int = 100, ready_ttl_ms: int = 100, check_timeout_ms: int = 500
    ) -> None:
        self._started = time.monotonic()
        self._ttl_s = {"/health": health_ttl_ms / 1000, "/ready": ready_ttl_ms / 1000}
        self._check_timeout_ms = check_timeout_ms
        self._checks: list[Check] = []
        self._cache: dict[str, Entry] = {"/health": self._entry(200, self._render_health())}
        # The newest round, in flight or done: its task is the future that waiters share.
        self._round: asyncio.Task[None] | None = None

    def add_ping(self, name: str) -> None:
        self._checks.append(Check(name, "ping", ping, 0.0, self._check_timeout_ms))

    def route(self, method: str, path: str, scope: Request) -> Response | None:
        """A cached response, or ``None`` when ``/ready`` has nothing servable: then await
        ``asyncio.shield(ready_round())`` and answer with ``route_latest`` and the same arguments. An
        expired entry is served while its refresh runs, up to twice the TTL old."""
        ttl = self._ttl_s.get(path)
        if ttl is None:
            return self.error_response(404)
        if method == "GET":
            head = False
        elif method == "HEAD":
            head = True
        else:
            return self.error_response(405)
        is_ready = path == "/ready"
        if is_ready:
            _default_view(scope)
        entry = self._cache.get(path)
        now = time.monotonic()
        if entry is not None and now - entry[0] < ttl:
            return entry[2] if head else entry[1]
        if not is_ready:
            entry = self._cache[path] = self._entry(200, self._render_health())
            return entry[2] if head else entry[1]
        self._start_refresh()
        if entry is not None and now - entry[0] < 2 * ttl:
            return entry[2] if head else entry[1]
        return None

    def ready_round(self) -> asyncio.Future[None]:
        """The future of the round in flight (or of the last one, already done), starting a round if
        none has been. Every waiter gets the same one: await it through ``asyncio.shield``, so that a
        waiter that is cancelled does not cancel the round the others wait for."""
        round_ = self._round
        return round_ if round_ is not None else self._start_refresh()

    def route_latest(self, method: str, path: str, scope: Request) -> Response:
        """Answers ``/ready`` from the newest round whatever its age: for requests that have just waited
        for that round."""
        if path != "/ready" or method not in ("GET", "HEAD"):
            raise ValueError("route_latest is only for GET or HEAD /ready")
        _default_view(scope)
        # Never a new round here: the caller has just waited for one, and it is the answer.
        entry = self._cache.get("/ready")
        if entry is None:
            # Only if a round was abandoned before it ever produced a result.
            return self.error_response(503)
        return entry[2] if method == "HEAD" else entry[1]

    async def check(self) -> tuple[bool, int, bytes]:
        """One uncached round: ``(ready, status, body)``."""
        return await self._run_round()

    def error_response(self, code: int) -> Response:
        headers = NOT_ALLOWED_HEADERS if code == 405 else JSON_HEADERS
        reason = REASONS.get(code, "Internal Server Error")
        return code, headers, dumps({"error": reason, "code": code, "timestamp": timestamp()})

    def _render_health(self) -> bytes:
        uptime = int(time.monotonic() - self._started)
        return dumps({"status": "healthy", "uptime_seconds": uptime, "timestamp": timestamp()})

    @staticmethod
    def _entry(status: int, body: bytes) -> Entry:
        return time.monotonic(), (status, JSON_HEADERS, body), (status, JSON_HEADERS, b"")

    def _start_refresh(self) -> asyncio.Task[None]:
        """Starts a round unless one is in flight; returns the newest round."""
        task = self._round
        if task is None or task.done():
            task = self._round = asyncio.get_running_loop().create_task(self._refresh_ready())
        return task

    async def _refresh_ready(self) -> None:
        _ready, status, body = await self._run_round()
        self._cache["/ready"] = self._entry(status, body)

    async def _run_round(self) -> tuple[bool, int, bytes]:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(self._run(check, started) for check in self._checks))
        subsystems = dict(outcomes)
        if all(detail["ready"] for _, detail in outcomes):
            return True, 200, dumps({"status": "ready", "subsystems": subsystems})
        report = {
            "status": "not_ready",
            "missing": [name for name, detail in outcomes if not detail["ready"]],
            "ready": [name for name, detail in outcomes if detail["ready"]],
            "subsystems": subsystems,
        }
        return False, 503, dumps(report)

    @staticmethod
    async def _run(check: Check, started: float) -> tuple[str, dict[str, Any]]:
        metric: float | None = None
        error: str | None = None
        try:
            metric = float(await asyncio.wait_for(check.func(), check.timeout_ms / 1000))
        except asyncio.TimeoutError:
            error = f"timed out after {check.timeout_ms} ms"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if metric is not None and not math.isfinite(metric):
            metric, error = None, f"{check.measurement} is not a finite number"
        elif metric is not None and metric <= check.threshold:
            error = f"{check.measurement} {metric:.2f} <= {check.threshold:.2f}"
        detail: dict[str, Any] = {
            "status": "pass" if error is None else "fail",
            "ready": error is None,
            "metric": metric,
            "threshold": check.threshold,
            "latency_ms": int((time.monotonic() - started) * 1000),
        }
        if error is not None:
            detail["error"] = error
        return check.name, detail


def _default_view(scope: Request) -> None:
    """Reads what a readiness request asks for, as the core does; only the default is implemented."""
    query = scope.query_string
    accept = scope.headers.get("accept")
    if query or (accept is not None and HEALTH_JSON in accept):
        raise NotImplementedError("the baseline renders only the default JSON")
