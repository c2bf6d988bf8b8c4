"""Kernels that the end-to-end tests serve with ``phoenix serve --app tests.apps:<name>``.

Checks that need to report how often they ran append a line to ``$PHOENIX_TEST_RUNS`` (a file the test
reads back), since the server runs in another process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable

from phoenix import Kernel, default_kernel


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


_never = threading.Event()


def failing(ready_ttl_ms: int = 0) -> Kernel:
    kernel = Kernel(ready_ttl_ms=ready_ttl_ms)

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


def failing_cached() -> Kernel:
    """``failing`` whose round is served for ten minutes: whatever asks next (a scrape) reads the
    same round instead of starting another."""
    return failing(ready_ttl_ms=600_000)


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


# Apps for tests that check ordering instead of time: each records what happened, in order, to
# `$PHOENIX_TEST_RUNS`, so that a test asserts the order of events rather than how long they took.

_ALL_STARTED_WAIT_S = 5.0


def three_async_overlapping() -> Kernel:
    """Three async checks that each record their start, then wait (up to 5 s) until all three have
    started before recording their end: run one after another, the first one fails."""
    kernel = Kernel(ready_ttl_ms=60_000)
    started: set[str] = set()

    def make(name: str) -> None:
        async def check() -> float:
            _record(f"start:{name}")
            started.add(name)
            deadline = time.monotonic() + _ALL_STARTED_WAIT_S
            while len(started) < 3:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {sorted(started)} started")
                await asyncio.sleep(0.005)
            _record(f"end:{name}")
            return 1.0

        kernel.subsystem(name, threshold=0.5, timeout_ms=30_000)(check)

    for i in range(3):
        make(f"async{i}")
    return kernel


def three_sync_overlapping() -> Kernel:
    """The same with plain functions (run in threads): they meet at a barrier."""
    kernel = Kernel(ready_ttl_ms=60_000)
    all_started = threading.Barrier(3, timeout=_ALL_STARTED_WAIT_S)

    def make(name: str) -> None:
        def check() -> float:
            _record(f"start:{name}")
            all_started.wait()  # BrokenBarrierError, reported as the check's failure, if alone
            _record(f"end:{name}")
            return 1.0

        kernel.subsystem(name, threshold=0.5, timeout_ms=30_000)(check)

    for i in range(3):
        make(f"sync{i}")
    return kernel


def hung_counted() -> Kernel:
    """Checks that never answer (async and sync), each start recorded: a pending run never restarts."""
    kernel = Kernel(ready_ttl_ms=0, request_log=False)
    never = threading.Event()

    @kernel.subsystem("hung_async", threshold=0.5, timeout_ms=200)
    async def hung_async() -> float:
        _record("hung_async")
        await asyncio.Event().wait()
        return 1.0

    @kernel.subsystem("hung_sync", threshold=0.5, timeout_ms=200)
    def hung_sync() -> float:
        _record("hung_sync")
        never.wait()
        return 1.0

    @kernel.subsystem("fine", threshold=0.5, timeout_ms=200)
    def fine() -> bool:
        return True

    return kernel


def gated() -> Kernel:
    """One check that records its start, then holds its round until the file `$PHOENIX_TEST_GATE`
    exists: the test decides when a request in flight may finish."""
    kernel = Kernel()
    gate = os.environ.get("PHOENIX_TEST_GATE", "")

    @kernel.subsystem("gated", threshold=0.5, timeout_ms=120_000)
    def gated_check() -> float:
        _record("gated")
        while not os.path.exists(gate):
            time.sleep(0.01)
        return 1.0

    return kernel


def non_ascii_name() -> Kernel:
    kernel = Kernel()
    kernel.add_ping("café")
    return kernel


def leaky() -> Kernel:
    """A check whose error carries a password twice, as database drivers' errors do."""
    kernel = Kernel()

    @kernel.subsystem("db", threshold=0.5)
    async def db() -> float:
        raise ConnectionError("could not connect to postgres://app:hunter2@db/app password=hunter2")

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


def slow_to_load() -> Kernel:
    """Takes 1.5 s to build in `phoenix serve` itself, after recording ``loading``: a test can send
    SIGTERM before any worker exists."""
    if not _in_server_worker():
        _record("loading")
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


# Apps for issue 9: the probe port, the event-loop heartbeat, gRPC health, a mounted kernel.

STALL_S = 3.0


def stalling() -> Kernel:
    """Wedges its event loop for 3 s, as an ``async def`` check with a blocking call does, in the one
    check run that finds (and removes) the file ``$PHOENIX_TEST_STALL``: the test decides when, and
    with several workers only the worker whose check took the file stalls. Heartbeat thresholds are
    small (live 1 s, ready 0.5 s); ``/ready/pid_<pid>`` names each worker."""
    kernel = Kernel(ready_ttl_ms=0, live_stale_ms=1000, ready_stale_ms=500, request_log=False)
    flag = os.environ.get("PHOENIX_TEST_STALL", "")

    @kernel.subsystem("stall", threshold=0.5)
    async def stall() -> bool:
        try:
            os.remove(flag)  # atomic: one run, in one process, gets it
        except FileNotFoundError:
            return True
        _record(f"stall:{os.getpid()}")
        time.sleep(STALL_S)  # noqa: ASYNC251 (the point: a blocking call on the event loop)
        return True

    kernel.subsystem(f"pid_{os.getpid()}", threshold=0.5)(lambda: True)
    return kernel


def _burn_cpu() -> int:
    """About 20-50 ms of pure-Python work, holding the GIL all along."""
    total = 0
    for i in range(500_000):
        total += i * i
    return total


def fastapi_app() -> object:
    """A FastAPI app with Phoenix mounted under /probe, and the kernel's own probe port
    (``$PHOENIX_TEST_PROBE_PORT``). ``/cpu`` burns CPU on the app's event loop, as a busy endpoint
    does. With ``$PHOENIX_TEST_START_HOOK`` set, the app's own start-up hook calls ``kernel.start()``;
    without it, the mount starts the kernel on its first request."""
    import contextlib
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

    kernel = Kernel(probe_port=int(os.environ["PHOENIX_TEST_PROBE_PORT"]))
    kernel.add_ping()

    # A plain function runs on a thread of its own: it does not wait for the busy event loop.
    @kernel.subsystem("db", threshold=0.5)
    def db() -> float:
        return 0.9

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        kernel.start()
        yield

    app = FastAPI(lifespan=lifespan if os.environ.get("PHOENIX_TEST_START_HOOK") else None)

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"home": "yes"}

    @app.get("/cpu")
    async def cpu() -> dict[str, int]:
        return {"total": _burn_cpu()}

    app.mount("/probe", kernel.asgi())
    return app


# Apps for issue 10: metrics, scraped by a real Prometheus.


def flagged() -> Kernel:
    """One check, ``flag``, that fails while the file ``$PHOENIX_TEST_FLAG`` exists: a test makes the
    kernel unready by creating the file, one instance at a time when it serves several."""
    kernel = Kernel(ready_ttl_ms=0, request_log=False)
    flag = os.environ.get("PHOENIX_TEST_FLAG", "")

    @kernel.subsystem("flag", threshold=0.5)
    def flag_absent() -> bool:
        return not os.path.exists(flag)

    return kernel


# Apps for issue 10's status page.


def status_page() -> Kernel:
    """The status page's kernel: `db` passes, `cache` warns, and `switch` reads its metric from the
    file `$PHOENIX_TEST_METRIC`, so the test decides when it fails."""
    kernel = Kernel()

    @kernel.subsystem("db", threshold=0.5)
    async def db() -> float:
        return 0.9

    @kernel.subsystem("cache", threshold=0.5, warn_threshold=0.8)
    def cache() -> float:
        return 0.7

    kernel.subsystem("switch", threshold=0.5)(_scripted_metric)
    return kernel


_SHOWCASE_RUNS_BEFORE_OUTAGE = 20


def status_showcase() -> Kernel:
    """The README's screenshot of the status page (benches/status_screenshot.py): the default kernel
    over ./phoenix-data, `job_queue` warning, and `payments_api`, which passes its first 20 runs and then
    fails, so its history strip shows the outage begin."""
    kernel = default_kernel()
    runs = itertools.count()

    @kernel.subsystem("payments_api", threshold=0.5)
    async def payments_api() -> float:
        if next(runs) < _SHOWCASE_RUNS_BEFORE_OUTAGE:
            return 1.0
        raise ConnectionError("connect to payments.internal:443 refused")

    @kernel.subsystem("job_queue", threshold=0.5, warn_threshold=0.8)
    def job_queue() -> float:
        return 0.72

    return kernel


# Apps for issue 11: native dependency checks, added through the typed Python API.


def _add_dependencies(kernel: Kernel) -> None:
    """Adds the checks the test declared in ``$PHOENIX_TEST_DEPENDENCIES`` (JSON: a list of
    ``[kind, name, keyword arguments]``), each with ``kernel.add_<kind>``."""
    adders: dict[str, Callable[..., None]] = {
        "postgres": kernel.add_postgres,
        "redis": kernel.add_redis,
        "http": kernel.add_http,
        "tcp": kernel.add_tcp,
        "disk": kernel.add_disk,
        "memory": kernel.add_memory,
    }
    for kind, name, arguments in json.loads(os.environ["PHOENIX_TEST_DEPENDENCIES"]):
        adders[kind](name, **arguments)


def dependencies() -> Kernel:
    kernel = Kernel(ready_ttl_ms=0)
    _add_dependencies(kernel)
    return kernel


_BLOCK_LIMIT_S = 120.0  # only so that a failed test cannot leave a worker spinning for ever


def blocked_dependencies() -> Kernel:
    """The declared checks, plus ``block``: an ``async def`` check that, in the one run that finds (and
    removes) the file ``$PHOENIX_TEST_BLOCK_FLAG``, blocks the event loop until the test writes a
    non-zero byte into the file ``$PHOENIX_TEST_BLOCK_GATE``, recording ``block:start`` and
    ``block:end``. ``$PHOENIX_TEST_BLOCK`` says how: ``sleep`` (``time.sleep``, as a blocking call in a
    route does: the loop is stuck but the GIL is free while it sleeps) or ``gil`` (a pure-Python spin with
    the switch interval raised, so that no other thread of the worker gets the GIL meanwhile). The gate is
    read through a memory map, which never releases the GIL. ``python``, a plain-function check in the
    background, shows whether the GIL was free meanwhile. Heartbeat thresholds are small (as
    :func:`stalling`), so the probe port soon says the loop is stalled."""
    kernel = Kernel(ready_ttl_ms=0, live_stale_ms=1000, ready_stale_ms=500, request_log=False)
    _add_dependencies(kernel)
    # The contrast: a Python check, run on a thread of its own, needs the GIL.
    kernel.subsystem("python", threshold=0.5, timeout_ms=300, interval_ms=100)(lambda: True)
    flag = os.environ["PHOENIX_TEST_BLOCK_FLAG"]
    how = os.environ["PHOENIX_TEST_BLOCK"]
    with open(os.environ["PHOENIX_TEST_BLOCK_GATE"], "r+b") as file:
        gate = mmap.mmap(file.fileno(), 1)

    @kernel.subsystem("block", threshold=0.5, timeout_ms=500)
    async def block() -> bool:
        try:
            os.remove(flag)
        except FileNotFoundError:
            return True
        _record("block:start")
        deadline = time.monotonic() + _BLOCK_LIMIT_S
        if how == "gil":
            switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(_BLOCK_LIMIT_S)
            try:
                while gate[0] == 0 and time.monotonic() < deadline:
                    pass
            finally:
                sys.setswitchinterval(switch_interval)
        else:
            while gate[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # noqa: ASYNC251 (the point: a blocking call on the event loop)
        _record("block:end")
        return True

    return kernel
