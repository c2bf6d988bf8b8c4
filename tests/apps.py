"""Kernels that the end-to-end tests serve with ``phoenix serve --app tests.apps:<name>``.

Checks that need to report how often they ran append a line to ``$PHOENIX_TEST_RUNS`` (a file the test
reads back), since the server runs in another process.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from phoenix import Kernel


def _record(name: str) -> None:
    path = os.environ.get("PHOENIX_TEST_RUNS")
    if path:
        with open(path, "a") as runs:
            runs.write(name + "\n")


def empty() -> Kernel:
    return Kernel()


def counting() -> Kernel:
    """One slow check and a long TTL: a cold cache under a burst must run it exactly once."""
    kernel = Kernel(ready_ttl_ms=60_000)

    @kernel.subsystem("counted", threshold=0.5, timeout_ms=2_000)
    async def counted() -> float:
        _record("counted")
        await asyncio.sleep(0.3)
        return 1.0

    return kernel


def three_async_100ms() -> Kernel:
    kernel = Kernel()
    for i in range(3):

        async def check() -> float:
            await asyncio.sleep(0.1)
            return 1.0

        kernel.subsystem(f"async{i}", threshold=0.5)(check)
    return kernel


def three_sync_100ms() -> Kernel:
    kernel = Kernel()
    for i in range(3):

        def check() -> float:
            time.sleep(0.1)
            return 1.0

        kernel.subsystem(f"sync{i}", threshold=0.5)(check)
    return kernel


_never = threading.Event()


def hung() -> Kernel:
    """Every request runs a round (TTL 0); both hung checks time out at 200 ms every time."""
    kernel = Kernel(ready_ttl_ms=0, request_log=False)

    @kernel.subsystem("hung_async", threshold=0.5, timeout_ms=200)
    async def hung_async() -> float:
        await asyncio.Event().wait()
        return 1.0

    @kernel.subsystem("hung_sync", threshold=0.5, timeout_ms=200)
    def hung_sync() -> float:
        _never.wait()
        return 1.0

    @kernel.subsystem("fine", threshold=0.5, timeout_ms=200)
    def fine() -> bool:
        return True

    return kernel


def failing() -> Kernel:
    kernel = Kernel(ready_ttl_ms=0)

    @kernel.subsystem("raises", threshold=0.5)
    def raises() -> float:
        raise ValueError("database unreachable at /secret/path")

    @kernel.subsystem("low", threshold=0.9)
    async def low() -> float:
        return 0.5

    @kernel.subsystem("ok", threshold=0.5)
    async def ok() -> bool:
        return True

    return kernel


def slow_ready() -> Kernel:
    """A round takes 1 s: long enough to send SIGTERM while a request is in flight."""
    kernel = Kernel()

    @kernel.subsystem("slow", threshold=0.5, timeout_ms=5_000)
    async def slow() -> float:
        await asyncio.sleep(1.0)
        return 1.0

    return kernel


class _BrokenCore:
    """The real core, except that answering a request fails: exercises the 500 path."""

    def __init__(self, real: object) -> None:
        self._real = real

    def route(self, *request: object) -> None:
        raise RuntimeError("internal failure with /private/detail")

    serve = route

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


class _BrokenKernel(Kernel):
    def __init__(self) -> None:
        super().__init__()
        self._core = _BrokenCore(self._core)  # type: ignore[assignment]
        self.request_log = True


def broken() -> Kernel:
    return _BrokenKernel()


def starlette_app() -> object:
    """An ASGI app with a kernel mounted under /probe, as a user would."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    kernel = Kernel()

    @kernel.subsystem("db", threshold=0.5)
    async def db() -> float:
        return 0.9

    async def home(request: object) -> PlainTextResponse:
        return PlainTextResponse("home")

    return Starlette(routes=[Route("/", home), Mount("/probe", kernel.asgi())])


def slow_check() -> Kernel:
    """Load suite, cache effectiveness: one 50 ms check and a TTL long enough that every request after
    the first (cold) one is a hit; the check records each run, so the test can tell that it ran once."""
    kernel = Kernel(ready_ttl_ms=60_000, request_log=False)

    @kernel.subsystem("slow", threshold=0.5, timeout_ms=2_000)
    async def slow() -> float:
        _record("slow")
        await asyncio.sleep(0.05)
        return 1.0

    return kernel


def _scripted_metric() -> float:
    """The metric the test wrote to ``$PHOENIX_TEST_METRIC`` (a file), so it can change over time."""
    with open(os.environ["PHOENIX_TEST_METRIC"]) as metric:
        return float(metric.read().strip() or "nan")


def probes() -> Kernel:
    """The probe-semantics kernel: one passing, one warning, one failing subsystem."""
    kernel = Kernel(ready_ttl_ms=0)

    @kernel.subsystem("db", threshold=0.5, warn_threshold=0.8)
    async def db() -> float:
        return 0.95

    @kernel.subsystem("cache", threshold=0.5, warn_threshold=0.8)
    def cache() -> float:
        return 0.7

    @kernel.subsystem("queue", threshold=0.9)
    async def queue() -> float:
        return 0.5

    return kernel


def scripted() -> Kernel:
    """A per-round check reading its metric from a file, tolerating two failures in a row."""
    kernel = Kernel(ready_ttl_ms=0)
    kernel.subsystem("scripted", threshold=0.5, failures_before_unready=3)(_scripted_metric)
    return kernel


def background() -> Kernel:
    """A background check (every 50 ms) reading its metric from a file."""
    kernel = Kernel(ready_ttl_ms=0)
    kernel.subsystem("bg", threshold=0.5, interval_ms=50)(_scripted_metric)
    return kernel


def guarded() -> Kernel:
    """Details only for requests bearing the token."""
    kernel = Kernel(details="token", token="s3cret")

    @kernel.subsystem("db", threshold=0.5)
    async def db() -> float:
        return 0.9

    return kernel


def private() -> Kernel:
    kernel = Kernel(details="never")
    kernel.add_ping()
    return kernel


def _in_server_worker() -> bool:
    """True in a Granian worker process, false in `phoenix serve` itself (which builds the kernel
    once, to validate --app, before any worker starts)."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def slow_start() -> Kernel:
    """Takes 1.5 s to build in each worker, after recording ``starting``: a test can send SIGTERM
    while a worker is still starting, at a point it has observed."""
    if _in_server_worker():
        _record("starting")
        time.sleep(1.5)
    return Kernel()


def worker_pid() -> Kernel:
    """Ready, and ``/ready`` names the process that answered: a test can tell workers apart."""
    kernel = Kernel(ready_ttl_ms=0, request_log=False)
    pid = os.getpid()
    kernel.subsystem(f"pid_{pid}", threshold=0.5)(lambda: True)
    return kernel


class _StartFailsCore:
    """The real core, except that starting it fails: exercises the ASGI lifespan's failure path."""

    def __init__(self, real: object) -> None:
        self._real = real

    def start(self, event_loop: object = None) -> None:
        raise RuntimeError("cannot start: the dependency is down")

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def start_fails() -> Kernel:
    kernel = Kernel()
    kernel._core = _StartFailsCore(kernel._core)  # type: ignore[assignment]
    return kernel


class _SlowStartKernel(Kernel):
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().start(loop)
        if _in_server_worker():
            _record("starting")
            time.sleep(1.5)


def slow_rsgi_init() -> Kernel:
    """Takes 1.5 s in ``__rsgi_init__`` (after Granian has installed the worker's signal handlers,
    before its event loop runs), after recording ``starting``."""
    return _SlowStartKernel()
