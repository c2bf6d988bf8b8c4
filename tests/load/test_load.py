"""The seed's load suite (its ``http_load_tests.rs``) against a real ``phoenix serve`` on loopback.

Each test prints a table in the seed's layout (see the terminal summary) and asserts only what holds on
any machine: every request succeeds with the expected status, latency does not degrade over sustained
load, and a cache hit is faster than a miss. Throughput and absolute latencies are reported, never
asserted: these tests share noisy machines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from ..conftest import Server
from .client import Connection, burst, concurrent, paced, sequential
from .result import LoadResult, fmt_latency, mean

pytestmark = pytest.mark.load

Report = Callable[[str], None]

CONNECTIONS = 50
SUSTAINED_RATE = 10.0  # requests a second
SUSTAINED_S = 10.0  # CI; the seed's 30 s with --load-full
SUSTAINED_FULL_S = 30.0
WINDOW = 50  # sustained: the first and last WINDOW requests are compared
MAX_DEGRADATION = 2.0
CACHE_HITS = 200


def wait_ready(server: Server, timeout: float = 20.0) -> None:
    """The default kernel's subsystems start in the background: /ready is 503 until they have."""
    deadline = time.monotonic() + timeout
    while (status := server.request("/ready").status) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200, f"/ready is still {status} after {timeout} s:\n{server.logs()}"


def assert_all_succeeded(result: LoadResult) -> None:
    assert result.ok == result.total, result.summary()


def test_health_sequential(serve: Any, report: Report) -> None:
    server = serve()
    result = asyncio.run(sequential("/health sequential (1 connection)", server.port, "/health", 1_000))
    report(result.table())
    assert_all_succeeded(result)


def test_health_concurrent(serve: Any, report: Report) -> None:
    server = serve()
    name = f"/health concurrent ({CONNECTIONS} connections)"
    result = asyncio.run(concurrent(name, server.port, "/health", 1_000, CONNECTIONS))
    report(result.table())
    assert_all_succeeded(result)


def test_ready_sequential(serve: Any, report: Report) -> None:
    server = serve()
    wait_ready(server)
    result = asyncio.run(sequential("/ready sequential (1 connection)", server.port, "/ready", 500))
    report(result.table())
    assert_all_succeeded(result)


def test_burst_of_new_connections(serve: Any, report: Report) -> None:
    server = serve()
    name = "Burst: /health, 500 simultaneous requests, each on a new connection"
    result = asyncio.run(burst(name, server.port, "/health", 500))
    report(result.table())
    assert_all_succeeded(result)


def test_sustained_load_does_not_degrade(serve: Any, report: Report, full: bool) -> None:
    duration = SUSTAINED_FULL_S if full else SUSTAINED_S
    server = serve()
    name = f"Sustained: /health at {SUSTAINED_RATE:g} req/s for {duration:g} s"
    result = asyncio.run(paced(name, server.port, "/health", SUSTAINED_RATE, duration))
    first, last = mean(result.latencies[:WINDOW]), mean(result.latencies[-WINDOW:])
    ratio = last / first
    report(
        result.table(
            [
                (f"First {WINDOW} avg", fmt_latency(first)),
                (f"Last {WINDOW} avg", fmt_latency(last)),
                ("Degradation", f"{ratio:.2f}x (limit {MAX_DEGRADATION:.1f}x)"),
            ]
        )
    )
    assert_all_succeeded(result)
    assert ratio < MAX_DEGRADATION, (
        f"the last {WINDOW} requests averaged {fmt_latency(last)}, the first {fmt_latency(first)}"
    )


async def miss_then_hits(port: int, hits: int) -> tuple[LoadResult, LoadResult]:
    """On one connection (warmed with a /health, so the miss does not pay for the connect): the first
    /ready, on a cold cache, then ``hits`` more."""
    miss = LoadResult("Cache miss: the first /ready (cold, one 50 ms check)", total=1)
    hit = LoadResult(f"Cache effectiveness: /ready, {hits} hits after the miss", total=hits)
    conn = await Connection.open(port)
    try:
        await conn.get("/health")
        for result, n in ((miss, 1), (hit, hits)):
            started = time.perf_counter()
            for _ in range(n):
                sent = time.perf_counter()
                try:
                    status, _body = await asyncio.wait_for(conn.get("/ready"), 10.0)
                except Exception as exc:
                    result.fail(type(exc).__name__)
                    return miss, hit
                if status == 200:
                    result.succeed(time.perf_counter() - sent)
                else:
                    result.fail(f"status {status}")
            result.duration = time.perf_counter() - started
    finally:
        await conn.close()
    return miss, hit


def test_cache_hit_is_faster_than_a_miss(serve: Any, report: Report) -> None:
    server = serve("--app", "tests.apps:slow_check")
    miss, hit = asyncio.run(miss_then_hits(server.port, CACHE_HITS))
    speedup = miss.avg / hit.avg
    report(
        hit.table(
            [
                ("Miss Latency", fmt_latency(miss.avg)),
                ("Hit Avg Latency", fmt_latency(hit.avg)),
                ("Speed-up", f"{speedup:,.0f}x"),
            ]
        )
    )
    assert_all_succeeded(miss)
    assert_all_succeeded(hit)
    # The miss waited for the check; the hits did not run it again.
    assert miss.avg >= 0.05, fmt_latency(miss.avg)
    assert server.runs() == ["slow"]
    assert hit.avg < miss.avg, f"hits averaged {fmt_latency(hit.avg)}, the miss took {fmt_latency(miss.avg)}"
