"""Benchmarks of the native dependency checks against the Python a user writes for them today.

One group per kind (``dependency-postgres``, ``-redis``, ``-http``, ``-tcp``, ``-disk``, ``-memory``), each
with two benchmarks of one check against the same real target, once every ``CADENCE_MS``:

- ``phoenix``: a ``phoenix._core.Core`` with the one dependency check, running in the background as every
  dependency check does (``interval_ms``). A round of ``Core.check()`` measures such a check only until
  it has its first result and reads its latest result after that, so no call of the binding times a run
  of a connection kept between runs; the runner's own clock does. pytest-benchmark's timer for these
  benchmarks is therefore that clock, as the kernel publishes it (:class:`RunnerClock`: the sum of
  ``phoenix_check_duration_seconds`` on ``/metrics``), and each round lasts exactly one run: from the
  probe's start to the verdict recorded, deadline, task and judging included.
- ``python``: the same check as a user writes it, awaited under the same deadline
  (``asyncio.wait_for``) through ``loop.run_until_complete``, timed by pytest-benchmark's usual clock:
  psycopg's ``AsyncConnection`` (kept, autocommit, ``SELECT 1``), redis-py's asyncio client (kept, PING)
  and httpx's ``AsyncClient`` (kept, GET) on the loop, ``asyncio.open_connection`` for tcp, and
  ``os.statvfs`` and the cgroup and ``/proc`` files the native check reads in a thread
  (``asyncio.to_thread``). Each round follows an idle ``CADENCE_MS`` (pedantic ``setup``), as the
  native runs do: a check that runs back to back in a hot loop would be timed warmer than any check
  that runs on a period is.

Each benchmark also records its CPU per check (``extra_info["cpu_s"]``, process CPU time, every thread):
the Python rounds' own over their number; for Phoenix, measured apart from the rounds (whose reading of
``/metrics`` would count against it), over ``ROUNDS`` runs more with nothing else running. After the
table, ``conftest.py`` prints both ratios per group.

Two more groups (``dependencies-cache-hit``, ``dependencies-cache-hit-ready``) time the cached ``/health``
and ``/ready`` of a kernel with the six checks running in the background every ``CADENCE_MS``
(``phoenix``) beside the same kernel without them (``phoenix-no-deps``): the checks must not slow the
cached path at all.

PostgreSQL and Redis are the real servers of tests/servers.py (installed with apt-get when missing); the
HTTP and TCP servers run in a process of their own (benches/reference_servers.py) so that their work is not
counted as the client's. Every benchmark checks its answers (``extra_info["correct"]``).

    make bench BENCH_OPTS="-k dependencies"
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import httpx
import psycopg
import pytest
import redis.asyncio
from tests.conftest import wait_until
from tests.servers import Postgres, Redis

from phoenix import _core
from phoenix.config import DEFAULTS
from test_micro import HOUR_MS, JSON_HEADERS, SCOPE, Tally, get_ready, is_health, record

KINDS = ("postgres", "redis", "http", "tcp", "disk", "memory")
# How often each check runs while measured, on both sides. Short, so that a benchmark takes seconds; the
# same for both, since a check that has been idle longer costs more to wake.
CADENCE_MS = 10
CADENCE_S = CADENCE_MS / 1000
ROUNDS = 200
WARMUP_ROUNDS = 10
# The deadline both sides put on a run; never reached here.
TIMEOUT_MS = 5000
# How often a Phoenix round looks for the run it waits for, once half a period has passed.
POLL_S = 0.0005
# The answers of connectivity checks, and how far the two sides' disk and memory fractions may drift
# apart between their readings (other processes write and allocate meanwhile).
UP = 1.0
TOLERANCE = {"disk": 0.01, "memory": 0.05}
METRICS_SCOPE = SCOPE._replace(headers={"accept": "text/plain;version=0.0.4"})
REFERENCE_SERVERS = Path(__file__).with_name("reference_servers.py")
PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")

Settings = dict[str, Any]


def kernel(*, ttl_ms: int = 100) -> _core.Core:
    """A Phoenix core as ``phoenix serve`` builds one with its defaults (both TTLs ``ttl_ms``)."""
    return _core.Core(
        ttl_ms,
        ttl_ms,
        DEFAULTS.check_timeout_ms,
        "always",
        None,
        DEFAULTS.live_stale_ms,
        DEFAULTS.ready_stale_ms,
        True,
    )


def add_dependency(core: _core.Core, kind: str, settings: Settings) -> None:
    """The ``kind`` check on ``settings``, named after its kind, run every ``CADENCE_MS``."""
    core.add_dependency(kind, kind, json.dumps(settings), timeout_ms=TIMEOUT_MS, interval_ms=CADENCE_MS)


async def check_round(core: _core.Core) -> tuple[bool, int, bytes]:
    return await core.check()


def metrics(core: _core.Core) -> dict[str, float]:
    """Every series on the core's ``/metrics`` (0.0.4 text), by its name and labels as written."""
    response = core.route("GET", "/metrics", METRICS_SCOPE)
    assert response is not None
    series = {}
    for line in response[2].decode().splitlines():
        if not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            series[key] = float(value)
    return series


class Runs(NamedTuple):
    """A check's runs so far as its runner counted and clocked them, and how many passed (or warned)."""

    ended: int
    seconds: float
    passed: int


@dataclass
class RunnerClock:
    """pytest-benchmark's timer for a ``phoenix`` benchmark: the seconds a background check's runs have
    taken by the runner's clock. Each reading is kept, so that the rounds can be checked to have lasted
    one run each (:attr:`one_run_each`)."""

    core: _core.Core | None
    name: str
    readings: list[int] = field(default_factory=list)

    def runs(self) -> Runs:
        assert self.core is not None, "the clock's kernel is gone"
        series, check = metrics(self.core), f'check="{self.name}"'
        return Runs(
            int(series[f"phoenix_check_duration_seconds_count{{{check}}}"]),
            series[f"phoenix_check_duration_seconds_sum{{{check}}}"],
            sum(int(series[f'phoenix_check_runs_total{{{check},result="{r}"}}']) for r in ("pass", "warn")),
        )

    def seconds(self) -> float:
        """The timer."""
        runs = self.runs()
        self.readings.append(runs.ended)
        return runs.seconds

    def next_run(self) -> None:
        """A round: returns once a run has ended since the timer was last read (at the round's start).
        The next ends about a period after the last one did, when the previous round returned."""
        # With benchmarks disabled (a sanity check), the timer is never read: from now, then.
        since = self.readings[-1] if self.readings else self.runs().ended
        time.sleep(CADENCE_S / 2)
        while self.runs().ended <= since:
            time.sleep(POLL_S)

    @property
    def one_run_each(self) -> bool:
        starts, ends = self.readings[0::2], self.readings[1::2]
        if len(starts) != len(ends) or not starts:
            return False
        return all(end - start == 1 for start, end in zip(starts, ends, strict=True))

    def stop(self) -> None:
        """Lets the kernel go, and its background check with it (pytest-benchmark keeps the timer)."""
        self.core = None


# --- The Python references ---------------------------------------------------------------------------


def disk_free(path: str) -> float:
    """The native disk check's metric: the fraction of the file system free to unprivileged users."""
    stats = os.statvfs(path)
    return stats.f_bavail / stats.f_blocks


def memory_free() -> float:
    """The native memory check's metric from the files it reads: the least free fraction among this
    process's cgroup v2 and its ancestors that set a ``memory.max`` (use less inactive file cache), else
    the host's ``MemAvailable / MemTotal``."""
    try:
        membership = (PROC / "self" / "cgroup").read_text()
    except OSError:
        membership = ""
    own = next((line[3:] for line in membership.splitlines() if line.startswith("0::")), None)
    free: list[float] = []
    if own is not None:
        parts = PurePosixPath(own.strip().lstrip("/")).parts
        if ".." not in parts:
            levels = (CGROUP.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1))
            free = [f for f in map(cgroup_free, levels) if f is not None]
    if free:
        return min(free)
    fields: dict[str, int] = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0]) if value.split() else 0
    return min(fields["MemAvailable"] / fields["MemTotal"], 1.0)


def cgroup_free(level: Path) -> float | None:
    """The free fraction of the cgroup at ``level``, or ``None`` when it sets no limit."""
    try:
        limit = (level / "memory.max").read_text().strip()
    except FileNotFoundError:
        return None
    if limit == "max":
        return None
    current = int((level / "memory.current").read_text())
    try:
        stat = (level / "memory.stat").read_text().splitlines()
    except OSError:
        stat = []
    inactive = next((int(line.split()[1]) for line in stat if line.startswith("inactive_file ")), 0)
    if int(limit) == 0:
        return 0.0
    return min(max(1.0 - max(current - inactive, 0) / int(limit), 0.0), 1.0)


@dataclass
class Reference:
    """A Python check: ``check`` answers the metric, ``close`` lets its kept connection go."""

    check: Callable[[], Awaitable[float]]
    close: Callable[[], Awaitable[None]] | None = None


async def open_reference(kind: str, settings: Settings) -> Reference:
    """The ``kind`` check on ``settings`` as a user writes it today, its connection (if any) opened."""
    if kind == "postgres":
        connection = await psycopg.AsyncConnection.connect(settings["dsn"], autocommit=True)

        async def select_one() -> float:
            cursor = await connection.execute("SELECT 1")
            await cursor.fetchone()
            return UP

        return Reference(select_one, connection.close)
    if kind == "redis":
        client = redis.asyncio.Redis.from_url(settings["url"])

        async def ping() -> float:
            return UP if await client.ping() else 0.0

        return Reference(ping, client.aclose)
    if kind == "http":
        web = httpx.AsyncClient()

        async def get() -> float:
            response = await web.get(settings["url"])
            return UP if response.is_success else 0.0

        return Reference(get, web.aclose)
    if kind == "tcp":

        async def connect() -> float:
            _, writer = await asyncio.open_connection(settings["host"], settings["port"])
            writer.close()
            await writer.wait_closed()
            return UP

        return Reference(connect)
    if kind == "disk":
        return Reference(lambda: asyncio.to_thread(disk_free, settings["path"]))
    if kind == "memory":
        return Reference(lambda: asyncio.to_thread(memory_free))
    raise ValueError(f"no Python reference for {kind!r}")


def expected_metric(kind: str, settings: Settings) -> float:
    """What a passing check answers: 1 for connectivity, the fraction read now for disk and memory."""
    if kind == "disk":
        return disk_free(settings["path"])
    if kind == "memory":
        return memory_free()
    return UP


def close_to(kind: str, metric: object, expected: float) -> bool:
    return isinstance(metric, float) and abs(metric - expected) <= TOLERANCE.get(kind, 0.0)


# --- Targets ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Redis]:
    server = Redis()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def reference_servers() -> Iterator[dict[str, int]]:
    """The ports of benches/reference_servers.py's HTTP and TCP servers, in a process of their own."""
    process = subprocess.Popen(
        [sys.executable, str(REFERENCE_SERVERS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        ports: dict[str, int] = json.loads(process.stdout.readline())
        yield ports
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def settings_for(kind: str, request: pytest.FixtureRequest) -> Settings:
    """The ``kind`` check's settings against its real target, started on first use."""
    if kind == "postgres":
        return {"dsn": request.getfixturevalue("postgres").dsn()}
    if kind == "redis":
        return {"url": request.getfixturevalue("redis_server").url()}
    if kind == "http":
        return {"url": f"http://127.0.0.1:{request.getfixturevalue('reference_servers')['http']}/"}
    if kind == "tcp":
        return {"host": "127.0.0.1", "port": request.getfixturevalue("reference_servers")["tcp"]}
    if kind == "disk":
        return {"path": tempfile.gettempdir()}
    return {}


# --- One check -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["phoenix", "python"])
@pytest.mark.parametrize("kind", KINDS)
def test_dependency(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop, kind: str, lib: str
) -> None:
    """One run of a ``kind`` check on a kept connection (where the kind keeps one), by the native check
    or by the Python a user writes for it; see the module's docstring for how each is timed."""
    settings = settings_for(kind, request)
    if lib == "phoenix":
        phoenix_check(request, loop, kind, settings)
    else:
        python_check(request, loop, kind, settings)


def phoenix_check(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop, kind: str, settings: Settings
) -> None:
    core = kernel()
    add_dependency(core, kind, settings)
    clock = RunnerClock(core, kind)
    # The fixture takes its timer from the closest benchmark marker, so this one goes first.
    request.node.add_marker(pytest.mark.benchmark(timer=clock.seconds), append=False)
    benchmark: Any = request.getfixturevalue("benchmark")
    benchmark.group = f"dependency-{kind}"
    benchmark.extra_info["lib"] = "phoenix"
    try:
        core.start(loop)
        # The first run opens the kept connection, if the kind keeps one: not a round.
        wait_until(lambda: clock.runs().passed > 0, what=f"the {kind} check to pass")

        benchmark.pedantic(clock.next_run, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)

        before, cpu = clock.runs(), time.process_time()
        time.sleep(ROUNDS * CADENCE_S)
        cpu, after = time.process_time() - cpu, clock.runs()
        benchmark.extra_info["cpu_s"] = cpu / (after.ended - before.ended)
        ready, _, body = loop.run_until_complete(check_round(core))
        metric = json.loads(body)["subsystems"][kind]["metric"]
        all_passed = after.passed == after.ended
        agrees = close_to(kind, metric, expected_metric(kind, settings))
        timed_one_each = clock.one_run_each or benchmark.disabled
        record(benchmark, ready and all_passed and timed_one_each and agrees)
    finally:
        clock.stop()


def python_check(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop, kind: str, settings: Settings
) -> None:
    benchmark: Any = request.getfixturevalue("benchmark")
    benchmark.group = f"dependency-{kind}"
    benchmark.extra_info["lib"] = "python"
    reference = loop.run_until_complete(open_reference(kind, settings))
    answers: list[float] = []

    def run() -> None:
        answers.append(loop.run_until_complete(asyncio.wait_for(reference.check(), TIMEOUT_MS / 1000)))

    try:
        cpu = time.process_time()
        benchmark.pedantic(
            run, setup=lambda: time.sleep(CADENCE_S), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS
        )
        benchmark.extra_info["cpu_s"] = (time.process_time() - cpu) / len(answers)
    finally:
        if reference.close is not None:
            loop.run_until_complete(reference.close())

    # Against the native check's own reading (disk, memory): the reference does the same work.
    native = kernel()
    add_dependency(native, kind, settings)
    _, _, body = loop.run_until_complete(check_round(native))
    expected = json.loads(body)["subsystems"][kind]["metric"]
    every_round = len(answers) == (1 if benchmark.disabled else ROUNDS + WARMUP_ROUNDS)
    record(benchmark, every_round and all(close_to(kind, m, expected) for m in answers))


# --- The cached path beside them ---------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["phoenix", "phoenix-no-deps"])
@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_cached_path_beside_dependency_checks(
    benchmark: Any, request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop, path: str, lib: str
) -> None:
    """``GET /health`` (group ``dependencies-cache-hit``) and ``GET /ready``
    (``dependencies-cache-hit-ready``) answered from a fresh entry, as in ``cache-hit`` and
    ``cache-hit-ready``, by a kernel whose six dependency checks run in the background every
    ``CADENCE_MS`` throughout (``phoenix``) and by the same kernel without them (``phoenix-no-deps``).
    The ratio printed is the cost of the checks to the cached path: 1.00 when there is none."""
    benchmark.group = "dependencies-cache-hit" + ("-ready" if path == "/ready" else "")
    benchmark.extra_info["lib"] = lib
    kinds = KINDS if lib == "phoenix" else ()
    core = kernel(ttl_ms=HOUR_MS)
    for kind in kinds:
        add_dependency(core, kind, settings_for(kind, request))
    core.start(loop)
    clocks = [RunnerClock(core, kind) for kind in kinds]
    try:
        wait_until(lambda: all(c.runs().passed > 0 for c in clocks), what="every check to pass")
        cached: _core.Response | None
        if path == "/ready":
            cached = loop.run_until_complete(get_ready(core, Tally()))
        else:
            cached = core.route("GET", path, SCOPE)
        before, started = [c.runs().ended for c in clocks], time.monotonic()

        response = benchmark(core.route, "GET", path, SCOPE)

        # Each check kept running throughout: at least half the runs its period allows (tokio's timer
        # delays a tick on a busy machine, never skips one).
        due = (time.monotonic() - started) / CADENCE_S
        ran = [c.runs().ended - b for c, b in zip(clocks, before, strict=True)]
        benchmark.extra_info["runs_meanwhile"] = min(ran, default=0)
        answered = is_health(response) if path == "/health" else is_ready(response, kinds)
        record(benchmark, response is cached and answered and all(n >= int(due / 2) for n in ran))
    finally:
        for c in clocks:
            c.stop()


def is_ready(response: _core.Response | None, kinds: tuple[str, ...]) -> bool:
    """A 200 ``/ready`` with every one of ``kinds`` passing (or warning, for disk and memory)."""
    if response is None:
        return False
    status, headers, body = response
    report = json.loads(body)
    subsystems = report.get("subsystems", {})
    return (
        (status, headers) == (200, JSON_HEADERS)
        and report.get("status") == "ready"
        and list(subsystems) == list(kinds)
        and all(s["status"] in ("pass", "warn") for s in subsystems.values())
    )
