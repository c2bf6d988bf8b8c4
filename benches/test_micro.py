"""Micro-benchmarks: Phoenix's Rust core against the same work in pure Python, in the same run.

Each group holds two benchmarks of one operation, ``phoenix`` (``phoenix._core.Core``, what the RSGI
handler calls) and ``pure-python`` (:class:`pure_python.PurePythonCore`: a dict with a ``time.monotonic``
TTL, ``asyncio.gather`` and ``json.dumps``), driven by the same code through the same calls; the
``metrics-render`` groups set a ``/metrics`` scrape beside ``prometheus-client`` (the official Python
client) rendering the same series. After the table, ``conftest.py`` prints each group's ratio of
medians; ``--benchmark-compare`` lines a run up against a saved one. Each benchmark also checks its
answers (``extra_info["correct"]``): a fast wrong answer fails.

    make bench
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

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


# --- /metrics --------------------------------------------------------------------------------------

SCRAPED_CHECKS = 100
# What a scraper sends: Prometheus 2.x asks for OpenMetrics first; with it off, for the 0.0.4 text.
ACCEPT = {
    "text": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
    "openmetrics": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}
CONTENT_TYPES = {
    "text": "text/plain; version=0.0.4; charset=utf-8",
    "openmetrics": "application/openmetrics-text; version=1.0.0; charset=utf-8",
}
# The latency buckets of both histograms (seconds), as the interface states them.
BUCKETS = {25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5}
BUCKETS |= {1.0, 2.5, 5.0, 10.0, math.inf}
# A request to each route template (and a HEAD and a 405), so that the HTTP series exist.
SERVED = [
    ("GET", "/health"),
    ("HEAD", "/health"),
    ("POST", "/health"),
    ("GET", "/live"),
    ("GET", "/startup"),
    ("GET", "/ready"),
    ("GET", "/ready/ping0"),
    ("GET", "/metrics"),
    ("GET", "/status"),
    ("GET", "/no-such-path"),
]
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_scope(accept: str) -> Scope:
    return Scope("", {"host": "10.0.0.7:5001", "user-agent": "Prometheus/2.42.0", "accept": accept})


@dataclass
class Scraped:
    """One kernel's series, held twice: by a Phoenix core, and by prometheus_client's metrics."""

    core: _core.Core
    registry: CollectorRegistry


def mirror(scrape: str) -> CollectorRegistry:
    """prometheus_client's metrics holding the series of ``scrape`` (Phoenix's 0.0.4 text), as a Python
    service would record them: each family declared with its type, name, help and label names (each
    histogram with its buckets), then each series set to its value."""
    registry = CollectorRegistry(auto_describe=False)
    for family in text_string_to_metric_families(scrape):
        if not family.samples:
            raise ValueError(f"{family.name} has no series: the kernel was not set up to fill it")
        name, documentation = family.name, family.documentation
        labelnames = [label for label in family.samples[0].labels if label != "le"]
        if family.type == "gauge":
            gauge = Gauge(name, documentation, labelnames, registry=registry)
            for sample in family.samples:
                (gauge.labels(**sample.labels) if labelnames else gauge).set(sample.value)
        elif family.type == "counter":
            counter = Counter(name, documentation, labelnames, registry=registry)
            for sample in family.samples:
                (counter.labels(**sample.labels) if labelnames else counter).inc(sample.value)
        elif family.type == "histogram":
            replay(family, labelnames, registry)
        else:
            raise ValueError(f"{name}: no mirror for a {family.type}")
    return registry


def replay(family: Metric, labelnames: list[str], registry: CollectorRegistry) -> None:
    """A histogram ``family`` declared with its buckets, and its observations replayed from its counts,
    each at its bucket's upper bound (twice the last finite bound for +Inf): the counts match, the sums
    do not."""
    cumulative: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for sample in family.samples:
        if sample.name.endswith("_bucket"):
            labels = tuple((k, v) for k, v in sample.labels.items() if k != "le")
            cumulative.setdefault(labels, []).append((float(sample.labels["le"]), sample.value))
    bounds = sorted({bound for counts in cumulative.values() for bound, _ in counts})
    metric = Histogram(family.name, family.documentation, labelnames, registry=registry, buckets=bounds)
    for labels, counts in cumulative.items():
        child = metric.labels(**dict(labels))
        below = 0.0
        for bound, count in sorted(counts):
            for _ in range(int(count - below)):
                child.observe(bound if bound != math.inf else 2 * bounds[-2])
            below = count


@pytest.fixture(scope="module")
def scraped(loop: asyncio.AbstractEventLoop) -> Iterator[Scraped]:
    """A kernel of 100 native pings after one round (every check has run and passed, so each of its
    series has a value) and a request to each route (served as the RSGI handler serves them, so they
    are counted), and prometheus_client's metrics holding the same series."""
    core = make_core("phoenix", health_ttl_ms=HOUR_MS, ready_ttl_ms=HOUR_MS, pings=SCRAPED_CHECKS)
    assert isinstance(core, _core.Core)
    loop.run_until_complete(get_ready(core, Tally()))
    for method, path in SERVED:
        assert core.serve(method, path, SCOPE) is not None, f"{method} {path} was not answered at once"
    response = core.route("GET", "/metrics", scrape_scope(ACCEPT["text"]))
    assert response is not None
    # Phoenix has no `_created` series: prometheus_client leaves them out too (for this process).
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    yield Scraped(core, mirror(response[2].decode()))
    prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]


def renderer(impl: str, scraped: Scraped, exposition: str) -> Callable[[], Response | None]:
    """A ``/metrics`` scrape, start to answer. Phoenix: ``core.route``, which reads the ``Accept``
    header, renders every series (never cached) and hands back ``(status, headers, body)``.
    prometheus_client: what its own HTTP handlers do, ``choose_encoder`` on the ``Accept`` header then
    the encoder (``generate_latest``) over the registry, into the same tuple."""
    accept = ACCEPT[exposition]
    if impl == "phoenix":
        scope = scrape_scope(accept)
        return lambda: scraped.core.route("GET", "/metrics", scope)

    def render() -> Response:
        encode, content_type = choose_encoder(accept)
        return 200, [("content-type", content_type)], encode(scraped.registry)

    return render


def series(response: Response | None, exposition: str) -> Series | None:
    """A scrape's samples by name and labels (``le`` as a number: the two write it differently), if it
    is a 200 in the format asked for that parses."""
    if response is None:
        return None
    status, headers, body = response
    # prometheus_client adds an `escaping` parameter to the OpenMetrics type.
    if status != 200 or len(headers) != 1 or not headers[0][1].startswith(CONTENT_TYPES[exposition]):
        return None
    text = body.decode()
    if exposition == "openmetrics":
        families = openmetrics_parser.text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    else:
        families = text_string_to_metric_families(text)
    found: Series = {}
    for family in families:
        for sample in family.samples:
            labels = {k: str(float(v)) if k == "le" else v for k, v in sample.labels.items()}
            found[sample.name, frozenset(labels.items())] = sample.value
    return found


def is_full_scrape(found: Series) -> bool:
    """Every check passing after its one run, and every histogram with the interface's buckets."""
    passing = [
        labels
        for (name, labels), value in found.items()
        if name == "phoenix_check_status" and ("status", "pass") in labels and value == 1
    ]
    bounds = {float(v) for name, labels in found if name.endswith("_bucket") for k, v in labels if k == "le"}
    return len(passing) == SCRAPED_CHECKS and bounds == BUCKETS


def same_series(a: Series, b: Series) -> bool:
    """The same series with the same values, but for those the two cannot share: the uptime (read at
    each scrape) and histogram sums (see ``mirror``)."""

    def steady(found: Series) -> Series:
        return {
            key: value
            for key, value in found.items()
            if key[0] != "phoenix_uptime_seconds" and not key[0].endswith("_sum")
        }

    return a.keys() == b.keys() and steady(a) == steady(b)


@pytest.mark.parametrize("exposition", ["text", "openmetrics"])
@pytest.mark.parametrize("impl", ["phoenix", "prometheus-client"])
def test_metrics_render(benchmark: Any, scraped: Scraped, impl: str, exposition: str) -> None:
    """A ``/metrics`` scrape of a kernel with 100 checks (about 3,300 samples, most of them the checks'
    duration buckets), in the 0.0.4 text format (group ``metrics-render``) and in OpenMetrics
    (``metrics-render-openmetrics``): Phoenix's core against prometheus_client rendering the same
    families and series (see ``mirror``). Each call renders anew; the answer must parse (with
    prometheus_client's parser for its format) to the other's series."""
    benchmark.group = "metrics-render" if exposition == "text" else "metrics-render-openmetrics"
    benchmark.extra_info["lib"] = impl
    render = renderer(impl, scraped, exposition)
    other = "prometheus-client" if impl == "phoenix" else "phoenix"

    response = benchmark(render)

    found = series(response, exposition)
    expected = series(renderer(other, scraped, exposition)(), exposition)
    again = render()
    renders_anew = response is not None and again is not None and again[2] is not response[2]
    record(
        benchmark,
        found is not None
        and expected is not None
        and is_full_scrape(found)
        and same_series(found, expected)
        and renders_anew,
    )
