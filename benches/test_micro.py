"""Micro-benchmarks: Phoenix's Rust core against the same work in pure Python, in the same run.

Each group holds two benchmarks of one operation, ``phoenix`` (``phoenix._core.Core``, what the RSGI
handler calls) and ``pure-python`` (:class:`pure_python.PurePythonCore`: a dict with a ``time.monotonic``
TTL, ``asyncio.gather`` and ``json.dumps``), driven by the same code through the same calls. After the
table, ``conftest.py`` prints each group's ratio of medians; ``--benchmark-compare`` lines a run up
against a saved one. Each benchmark also checks its answers (``extra_info["correct"]``): a fast wrong
answer fails.

    make bench
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol

import pytest

from phoenix import _core
from phoenix.config import DEFAULTS
from pure_python import PurePythonCore, Request, Response

IMPLS = ["phoenix", "pure-python"]
HOUR_MS = 3_600_000
JSON_HEADERS = [("content-type", "application/json")]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CONCURRENT = 100


class Scope(NamedTuple):
    """What the core reads off a request, in the shape of Granian's RSGI scope (as ``phoenix.app`` makes
    it for ASGI)."""

    query_string: str
    headers: dict[str, str]


# A probe's request: no query, and its headers as Granian hands them over (any object with `get`).
SCOPE = Scope(
    "",
    {"host": "10.0.0.7:5001", "user-agent": "kube-probe/1.31", "accept": "*/*", "connection": "close"},
)


class Core(Protocol):
    """The calls the benchmarks make; ``phoenix._core.Core`` and ``PurePythonCore`` both answer them."""

    def route(self, method: str, path: str, scope: Request) -> Response | None: ...
    def ready_round(self) -> asyncio.Future[None]: ...
    def route_latest(self, method: str, path: str, scope: Request) -> Response: ...
    def check(self) -> Awaitable[tuple[bool, int, bytes]]: ...
    def error_response(self, code: int) -> Response: ...
    def add_ping(self, name: str) -> None: ...


def make_core(impl: str, *, health_ttl_ms: int = 100, ready_ttl_ms: int = 100, pings: int = 0) -> Core:
    core: Core
    if impl == "phoenix":
        core = _core.Core(
            health_ttl_ms,
            ready_ttl_ms,
            DEFAULTS.check_timeout_ms,
            "always",
            None,
            DEFAULTS.live_stale_ms,
            DEFAULTS.ready_stale_ms,
            DEFAULTS.metrics,
        )
    else:
        core = PurePythonCore(health_ttl_ms, ready_ttl_ms)
    for i in range(pings):
        core.add_ping(f"ping{i}")
    return core


def record(benchmark: Any, correct: bool) -> None:
    benchmark.extra_info["correct"] = correct
    assert correct, f"{benchmark.extra_info['lib']} answered wrongly"


def is_recent(timestamp: object) -> bool:
    if not isinstance(timestamp, str) or not TIMESTAMP.fullmatch(timestamp):
        return False
    at = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return abs(datetime.now(timezone.utc) - at) < timedelta(minutes=1)


def is_health(response: Response | None) -> bool:
    if response is None:
        return False
    status, headers, body = response
    report = json.loads(body)
    return (
        (status, headers) == (200, JSON_HEADERS)
        and report.keys() == {"status", "uptime_seconds", "timestamp"}
        and report["status"] == "healthy"
        and type(report["uptime_seconds"]) is int
        and is_recent(report["timestamp"])
    )


def is_pings_report(body: bytes, n: int) -> bool:
    """``body`` is the ``/ready`` body of ``n`` passing pings in registration order (latency aside)."""
    report = json.loads(body)
    names = [f"ping{i}" for i in range(n)]
    subsystems = report.get("subsystems", {})
    for detail in subsystems.values():
        latency = detail.get("latency_ms")
        if type(latency) is int and latency >= 0:
            detail["latency_ms"] = 0
    expected = {"status": "pass", "ready": True, "metric": 1.0, "threshold": 0.0, "latency_ms": 0}
    return list(subsystems) == names and report == {
        "status": "ready",
        "subsystems": dict.fromkeys(names, expected),
    }


def is_ready_response(response: Response, n: int) -> bool:
    status, headers, body = response
    return (status, headers) == (200, JSON_HEADERS) and is_pings_report(body, n)


@dataclass
class Tally:
    requests: int = 0
    waited: int = 0


async def get_ready(core: Core, tally: Tally) -> Response:
    """``GET /ready`` as the RSGI handler makes it (``phoenix.app``): from the cache, else, once the round
    in flight is done, from the newest round. Every waiter awaits that round's one shared future,
    shielded."""
    tally.requests += 1
    response = core.route("GET", "/ready", SCOPE)
    if response is None:
        tally.waited += 1
        await asyncio.shield(core.ready_round())
        response = core.route_latest("GET", "/ready", SCOPE)
    return response


async def check_round(core: Core) -> tuple[bool, int, bytes]:
    return await core.check()


def cold_core(impl: str, loop: asyncio.AbstractEventLoop) -> tuple[tuple[Core], dict[str, Any]]:
    """A ``pedantic`` setup: a new core with 3 pings and nothing cached, so the timed requests miss. A
    cold cache takes the same path as an entry expired past twice its TTL.

    The new core first runs one uncached round (``check``, which leaves the cache cold): a Phoenix
    core's first round costs more than its later ones (60 to 80 us more when this was written), which a
    serving kernel pays once, not per probe. The baseline's first round costs no more."""
    core = make_core(impl, ready_ttl_ms=HOUR_MS, pings=3)
    loop.run_until_complete(check_round(core))
    return (core,), {}


@pytest.mark.benchmark(group="cache-hit")
@pytest.mark.parametrize("impl", IMPLS)
def test_cache_hit(benchmark: Any, impl: str) -> None:
    """``GET /health`` answered from a fresh entry: routing, the TTL check and the hand-back of the
    pre-built ``(status, headers, body)``, the same object every time (nothing is rendered)."""
    benchmark.extra_info["lib"] = impl
    core = make_core(impl, health_ttl_ms=HOUR_MS)
    cached = core.route("GET", "/health", SCOPE)

    response = benchmark(core.route, "GET", "/health", SCOPE)

    record(benchmark, response is cached and is_health(response))


@pytest.mark.benchmark(group="cache-hit-ready")
@pytest.mark.parametrize("impl", IMPLS)
def test_cache_hit_ready(benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str) -> None:
    """``GET /ready`` answered from a fresh entry (3 pings): as ``cache-hit``, plus reading the request's
    query and ``Accept`` header to choose the answer's format."""
    benchmark.extra_info["lib"] = impl
    core = make_core(impl, ready_ttl_ms=HOUR_MS, pings=3)
    cached = loop.run_until_complete(get_ready(core, Tally()))

    response = benchmark(core.route, "GET", "/ready", SCOPE)

    record(benchmark, response is cached and is_ready_response(cached, 3))


@pytest.mark.benchmark(group="single-flight-miss")
@pytest.mark.parametrize("impl", IMPLS)
def test_single_flight_miss(benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str) -> None:
    """One ``GET /ready`` at a cold cache, start to answer, through one ``run_until_complete``: ``route``
    starts the refresh (one round of 3 native pings, rendered). The baseline answers ``None`` and the
    request awaits the round's future, then is answered by ``route_latest``; Phoenix's pings answer at
    once, so its round completes inside ``route``, which answers with it.

    One core with ``ready_ttl_ms=0``, so every request misses: each entry is born stale, with no stale
    window, and only a request starts a round, so each runs its own from the start and nothing runs
    between requests. That is the miss a serving kernel takes, with no untimed setup; a new core per
    request would also time a Phoenix core's costlier first round (see ``cold_core``). Every request gets
    a new entry; ``extra_info["waited"]`` is the share that had to wait.
    """
    benchmark.extra_info["lib"] = impl
    core = make_core(impl, ready_ttl_ms=0, pings=3)
    tally = Tally()
    responses: list[Response] = []

    def request() -> None:
        responses.append(loop.run_until_complete(get_ready(core, tally)))

    benchmark.pedantic(request, rounds=2000, warmup_rounds=100)

    benchmark.extra_info["waited"] = tally.waited / tally.requests
    a_new_round_each = len({id(r) for r in responses}) == len(responses)
    record(benchmark, a_new_round_each and all(is_ready_response(r, 3) for r in responses))


@pytest.mark.benchmark(group=f"single-flight-miss-{CONCURRENT}")
@pytest.mark.parametrize("impl", IMPLS)
def test_single_flight_miss_concurrent(benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str) -> None:
    """100 concurrent ``GET /ready`` (one ``asyncio.gather``) at a cold cache: one refresh (3 native
    pings) answers them all, whether a request waits for it or arrives after it.

    The checks ran once per iteration: every iteration's 100 responses are one and the same object, a
    different one each iteration (a new core each, built untimed by ``cold_core``), and with an hour's
    TTL that entry stays fresh throughout, so no second refresh can begin. Not one core with
    ``ready_ttl_ms=0``: there, a round that ends before the burst's last ``route`` leaves the requests
    after it to start a second round (Phoenix's runs on the core's own thread, so it can), and the
    burst would time one round or two.
    """
    benchmark.extra_info["lib"] = impl
    tally = Tally()
    bursts: list[list[Response]] = []

    async def burst(core: Core) -> list[Response]:
        return await asyncio.gather(*(get_ready(core, tally) for _ in range(CONCURRENT)))

    def requests(core: Core) -> None:
        bursts.append(loop.run_until_complete(burst(core)))

    benchmark.pedantic(requests, setup=lambda: cold_core(impl, loop), rounds=200, warmup_rounds=10)

    benchmark.extra_info["waited"] = tally.waited / tally.requests
    one_round_each = all(len(b) == CONCURRENT and all(r is b[0] for r in b) for b in bursts)
    a_new_round_each = len({id(b[0]) for b in bursts}) == len(bursts)
    record(
        benchmark,
        one_round_each and a_new_round_each and all(is_ready_response(b[0], 3) for b in bursts),
    )


@pytest.mark.parametrize("n", [3, 100])
@pytest.mark.parametrize("impl", IMPLS)
def test_round(benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str, n: int) -> None:
    """One uncached check round of ``n`` native pings, rendered: ``await core.check()``, which returns
    ``(ready, status, body)``. Phoenix spawns a tokio task per check under its own deadline, joins them
    and renders with serde_json; the baseline gathers one ``asyncio.wait_for`` per check and renders
    with ``json.dumps``."""
    benchmark.group = f"round-{n}"
    benchmark.extra_info["lib"] = impl
    core = make_core(impl, pings=n)

    ready, status, body = benchmark(lambda: loop.run_until_complete(check_round(core)))

    record(benchmark, ready and status == 200 and is_pings_report(body, n))


@pytest.mark.benchmark(group="render")
@pytest.mark.parametrize("impl", IMPLS)
def test_render(benchmark: Any, impl: str) -> None:
    """Rendering one response on its own. The core renders ``/ready`` only inside a round and ``/health``
    only on a refresh, so the rendering its API exposes alone is ``error_response(404)``: the JSON body
    ``{"error", "code", "timestamp"}`` with the current time in RFC 3339 (serde_json), turned into a new
    ``(status, headers, body)`` tuple, on every call. The baseline builds the same dict with
    ``datetime.now(timezone.utc).isoformat``, ``json.dumps`` and ``encode``, into the same tuple."""
    benchmark.extra_info["lib"] = impl
    core = make_core(impl)

    status, headers, body = benchmark(core.error_response, 404)

    report = json.loads(body)
    record(
        benchmark,
        (status, headers) == (404, JSON_HEADERS)
        and report.keys() == {"error", "code", "timestamp"}
        and (report["error"], report["code"]) == ("Not Found", 404)
        and is_recent(report["timestamp"]),
    )
