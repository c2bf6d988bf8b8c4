"""End to end: `GET /metrics` on real servers, on the main port and on the probe port. The Prometheus
text format by default and OpenMetrics when asked; the series of the interface with their labels;
requests counted under their route template, so 10,000 unknown paths make one series; `metrics =
false`; the token; promtool's verdict on a real scrape; a failing check seen in its status."""

from __future__ import annotations

import http.client
import math
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import phoenix

from .conftest import Server, assert_json_error, serve_with_probe_port, wait_for_answer

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
BEARER = {"Authorization": "Bearer s3cret"}
# The interface's buckets, for both histograms, as the text format writes them.
BUCKETS = [
    "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf",
]  # fmt: skip
ROUTES = {"/health", "/live", "/startup", "/ready", "/ready/{name}", "/metrics", "/status", "other"}
STATUSES = {"pass", "warn", "fail", "pending"}
RUN_RESULTS = {"pass", "warn", "fail", "timeout", "error"}
UNKNOWN_PATHS = 10_000

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')

Labels = frozenset[tuple[str, str]]


@dataclass
class Scrape:
    """One exposition, its samples keyed by name and label set."""

    text: str
    samples: dict[tuple[str, Labels], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, Labels], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = SAMPLE.match(line)
            assert match, f"not a sample: {line!r}"
            labels = frozenset((m["key"], m["value"]) for m in LABEL.finditer(match["labels"] or ""))
            key = (match["name"], labels)
            assert key not in samples, f"the same series twice: {line}"
            samples[key] = float(match["value"])
        return cls(text, samples)

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.samples if sample == name]

    def requests(self) -> Counter[tuple[str, str, str]]:
        """``phoenix_http_requests_total`` by (route, method, code)."""
        counts: Counter[tuple[str, str, str]] = Counter()
        for (name, labels), value in self.samples.items():
            if name == "phoenix_http_requests_total":
                label = dict(labels)
                counts[label["route"], label["method"], label["code"]] = int(value)
        return counts


def scrape(server: Server, headers: dict[str, str] | None = None) -> Scrape:
    response = server.request("/metrics", headers=headers)
    assert response.status == 200, (response.status, response.body)
    assert response.headers["content-type"] == PROMETHEUS_TEXT
    return Scrape.parse(response.body.decode())


@pytest.fixture(params=["main", "probe"])
def port(request: pytest.FixtureRequest) -> str:
    """Which port of the server a test asks: every test here holds for both."""
    param: str = request.param
    return param


def serve_on(serve: Any, port: str, *args: str, **options: Any) -> Server:
    """``phoenix serve *args`` with a probe port: the server as seen on ``port`` (main or probe)."""
    main, probe = serve_with_probe_port(serve, *args, **options)
    return main if port == "main" else probe


# -- formats -------------------------------------------------------------------------------------------


def test_the_prometheus_text_format_by_default(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:failing")
    for headers in ({}, {"Accept": "text/plain"}, {"Accept": "*/*"}):
        response = server.request("/metrics", headers=headers)
        assert response.status == 200, headers
        assert response.headers["content-type"] == PROMETHEUS_TEXT, headers
        text = response.body.decode()
        assert text.endswith("\n")
        assert "# EOF" not in text
        # The text format names a counter family with its _total suffix.
        assert "# TYPE phoenix_http_requests_total counter\n" in text
        assert "# TYPE phoenix_check_duration_seconds histogram\n" in text
    head = server.request("/metrics", method="HEAD")
    assert (head.status, head.headers["content-type"], head.body) == (200, PROMETHEUS_TEXT, b"")


def test_openmetrics_when_the_scraper_asks_for_it(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:failing")
    for accept in (PROMETHEUS_ACCEPT, "application/openmetrics-text"):
        response = server.request("/metrics", headers={"Accept": accept})
        assert response.status == 200, accept
        assert response.headers["content-type"] == OPENMETRICS, accept
        text = response.body.decode()
        assert text.endswith("# EOF\n"), text[-200:]
        assert text.count("# EOF") == 1
        # OpenMetrics names the family without _total, and its samples with it.
        assert "# TYPE phoenix_http_requests counter\n" in text
        assert "phoenix_http_requests_total{" in text
    head = server.request("/metrics", method="HEAD", headers={"Accept": PROMETHEUS_ACCEPT})
    assert (head.status, head.headers["content-type"], head.body) == (200, OPENMETRICS, b"")


# -- the series --------------------------------------------------------------------------------------


def test_the_series_of_the_interface(serve: Any, port: str) -> None:
    # One round answers both the request and the scrape. With a TTL of 0 the scrape started another,
    # whose plain-function check could finish before the probe port's scrape was rendered.
    server = serve_on(serve, port, "--app", "tests.apps:failing_cached")
    before = time.time()
    assert server.request("/ready").status == 503  # one round: raises errs, low fails, ok passes
    metrics = scrape(server)
    after = time.time()

    assert metrics.value("phoenix_ready") == 0
    assert metrics.value("phoenix_draining") == 0
    uptime = metrics.value("phoenix_uptime_seconds")
    assert uptime is not None
    assert uptime > 0
    assert metrics.series("phoenix_build_info") == [{"version": phoenix.__version__}]
    assert metrics.value("phoenix_build_info", version=phoenix.__version__) == 1
    lag = metrics.value("phoenix_event_loop_lag_seconds")  # a served kernel: its loop beats
    assert lag is not None
    assert lag >= 0

    checks = {"raises": "fail", "low": "fail", "ok": "pass"}
    for check, current in checks.items():
        for status in STATUSES:
            assert metrics.value("phoenix_check_status", check=check, status=status) == (status == current)
    assert len(metrics.series("phoenix_check_status")) == len(checks) * len(STATUSES)

    ran = {"raises": "error", "low": "fail", "ok": "pass"}
    for check, how in ran.items():
        for result in RUN_RESULTS:
            runs = metrics.value("phoenix_check_runs_total", check=check, result=result)
            assert runs == (result == how), (check, result, runs)
        assert metrics.value("phoenix_check_duration_seconds_count", check=check) == 1
        duration = metrics.value("phoenix_check_duration_seconds_sum", check=check)
        assert duration is not None
        assert duration > 0
        assert_histogram(metrics, "phoenix_check_duration_seconds", check=check)

    # A success's time, and none for a check that never passed.
    last_success = metrics.value("phoenix_check_last_success_timestamp_seconds", check="ok")
    assert last_success is not None
    assert math.floor(before) <= last_success <= after
    assert metrics.series("phoenix_check_last_success_timestamp_seconds") == [{"check": "ok"}]

    cache = {(s["endpoint"], s["result"]) for s in metrics.series("phoenix_cache_requests_total")}
    assert cache == {(e, r) for e in ("health", "ready") for r in ("hit", "miss", "coalesced")}
    assert metrics.value("phoenix_cache_requests_total", endpoint="ready", result="miss") == 1

    assert metrics.requests()["/ready", "GET", "503"] == 1
    assert_histogram(metrics, "phoenix_http_request_duration_seconds", route="/ready")


def assert_histogram(metrics: Scrape, name: str, **labels: str) -> None:
    """``name``'s buckets for ``labels`` are the interface's, cumulative, and +Inf is the count."""
    found = [metrics.value(f"{name}_bucket", le=le, **labels) for le in BUCKETS]
    counts = [count for count in found if count is not None]
    assert len(counts) == len(BUCKETS), (name, labels, found)
    assert counts == sorted(counts), (name, labels, counts)
    assert counts[-1] == metrics.value(f"{name}_count", **labels)
    assert len([s for s in metrics.series(f"{name}_bucket") if s.items() >= labels.items()]) == len(BUCKETS)


def route_of(path: str) -> str:
    """The route template the interface names for ``path``."""
    if path in ROUTES:
        return path
    name = path.removeprefix("/ready/")
    return "/ready/{name}" if name != path and name and "/" not in name else "other"


def test_requests_are_counted_under_their_route_template(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:probes")
    asked = [
        ("GET", "/health"), ("GET", "/health"), ("HEAD", "/health"), ("GET", "/live"), ("GET", "/startup"),
        ("GET", "/ready"), ("GET", "/ready?verbose"), ("GET", "/ready/db"), ("HEAD", "/ready/queue"),
        ("GET", "/ready/nonexistent"), ("POST", "/ready"), ("DELETE", "/health"), ("GET", "/status"),
        ("GET", "/nowhere"), ("GET", "/ready/db/extra"), ("PUT", "/nowhere"),
    ]  # fmt: skip
    first = scrape(server)
    expected: Counter[tuple[str, str, str]] = Counter({("/metrics", "GET", "200"): 1})  # the first scrape
    for method, target in asked:
        response = server.request(target, method=method)
        route = route_of(target.partition("?")[0])
        expected[route, method if method in ("GET", "HEAD") else "other", str(response.status)] += 1
    second = scrape(server)

    counted = second.requests()
    counted.subtract(first.requests())
    assert +counted == expected
    by_route: Counter[str] = Counter()
    for (route, _, _), count in second.requests().items():
        by_route[route] += count
    for route, count in by_route.items():
        assert second.value("phoenix_http_request_duration_seconds_count", route=route) == count, route
    # The template, never the path.
    assert {s["route"] for s in second.series("phoenix_http_requests_total")} <= ROUTES
    for word in ("nonexistent", "nowhere", "extra"):
        assert word not in second.text, word


def test_a_scrape_does_not_count_itself(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:empty")
    assert scrape(server).requests()["/metrics", "GET", "200"] == 0
    assert scrape(server).requests()["/metrics", "GET", "200"] == 1


def test_cached_answers_are_counted_once_each(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:empty")
    for _ in range(20):
        assert server.request("/health").status == 200
        assert server.request("/ready").status == 200
    metrics = scrape(server)
    for endpoint, route in (("health", "/health"), ("ready", "/ready")):
        answered = metrics.requests()[route, "GET", "200"]
        assert answered >= 20, route
        cached = [
            metrics.value("phoenix_cache_requests_total", endpoint=endpoint, result=result)
            for result in ("hit", "miss", "coalesced")
        ]
        assert sum(c or 0 for c in cached) == answered, (endpoint, cached)


def test_ten_thousand_unknown_paths_add_no_series(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:empty")
    assert server.request("/missing").status == 404  # the series they all share
    scrape(server)  # so that the scrapes' own series exist too
    before = scrape(server)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for i in range(UNKNOWN_PATHS):
            connection.request("GET", f"/unknown-{i}")  # keep-alive: one connection for all
            response = connection.getresponse()
            response.read()
            assert response.status == 404
    finally:
        connection.close()
    after = scrape(server)

    assert set(after.samples) == set(before.samples)
    other = after.requests()["other", "GET", "404"] - before.requests()["other", "GET", "404"]
    assert other == UNKNOWN_PATHS
    assert "unknown-" not in after.text


# -- configuration and the details policy ------------------------------------------------------------


def test_metrics_false_gives_a_json_404(serve: Any, port: str, tmp_path: Path) -> None:
    (tmp_path / "phoenix.toml").write_text("metrics = false\n")  # the server's working directory
    server = serve_on(serve, port, "--app", "tests.apps:failing")
    assert_json_error(server.request("/metrics"), 404)
    assert_json_error(server.request("/metrics", headers={"Accept": PROMETHEUS_ACCEPT}), 404)
    assert server.request("/metrics", method="HEAD").status == 404
    assert server.request("/ready").status == 503  # everything else is served as before


def test_the_token_guards_metrics(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:guarded")
    assert_json_error(server.request("/metrics"), 401)
    assert_json_error(server.request("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
    assert_json_error(server.request("/metrics", headers={"Accept": PROMETHEUS_ACCEPT}), 401)
    assert scrape(server, BEARER).value("phoenix_build_info", version=phoenix.__version__) == 1
    response = server.request("/metrics", headers={**BEARER, "Accept": PROMETHEUS_ACCEPT})
    assert (response.status, response.headers["content-type"]) == (200, OPENMETRICS)


def test_metrics_public_serves_them_without_the_token(serve: Any, port: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:guarded", env={"PHOENIX_METRICS_PUBLIC": "true"})
    assert scrape(server).value("phoenix_build_info", version=phoenix.__version__) == 1
    assert scrape(server, {"Authorization": "Bearer wrong"}).value("phoenix_draining") == 0
    # Only the metrics: readiness details still need the token.
    assert server.request("/ready").json() == {"status": "ready"}
    assert "subsystems" in server.request("/ready", headers=BEARER).json()


def test_details_never_still_serves_metrics(serve: Any, port: str) -> None:
    # They hold names and numbers, never an error text, and a scraper beyond loopback is their point.
    server = serve_on(serve, port, "--app", "tests.apps:private")
    assert server.request("/ready").json() == {"status": "ready"}
    assert scrape(server).value("phoenix_check_status", check="ping", status="pass") == 1


# -- promtool and a failing check --------------------------------------------------------------------


def test_promtool_passes_a_real_scrape(serve: Any, port: str, promtool: str) -> None:
    server = serve_on(serve, port, "--app", "tests.apps:failing")
    for target in ("/ready", "/ready/ok", "/health", "/nowhere"):
        server.request(target)
    body = server.request("/metrics").body
    # promtool 2.42 reads the text format only (given OpenMetrics, it takes each counter's samples
    # for a family without help): the OpenMetrics exposition is checked by a real Prometheus instead,
    # which asks for it (tests/test_prometheus.py).
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert checked.returncode == 0, (checked.stdout, checked.stderr)
    assert checked.stdout == b""
    assert checked.stderr == b""


def test_a_check_made_to_fail_shows_in_its_status(serve: Any, port: str, tmp_path: Path) -> None:
    flag = tmp_path / "unready"
    server = serve_on(serve, port, "--app", "tests.apps:flagged", env={"PHOENIX_TEST_FLAG": str(flag)})
    assert server.request("/ready").status == 200
    ready = scrape(server)
    assert ready.value("phoenix_ready") == 1
    assert ready.value("phoenix_check_status", check="flag", status="pass") == 1
    assert ready.value("phoenix_check_status", check="flag", status="fail") == 0

    flag.touch()
    # The round the scrape started may still be running, and a /ready meanwhile shares it (single
    # flight): wait for the first round that sees the flag.
    wait_for_answer(server, "/ready", lambda answer: answer.status == 503, "/ready to see the flag")
    failing = scrape(server)
    assert failing.value("phoenix_ready") == 0
    assert failing.value("phoenix_check_status", check="flag", status="fail") == 1
    assert failing.value("phoenix_check_status", check="flag", status="pass") == 0
    # With ready_ttl_ms = 0 a scrape also starts a round, as /ready would (this blocking check's round
    # ends after the scrape is answered): at least the runs /ready asked for are counted.
    for result in ("fail", "pass"):
        runs = failing.value("phoenix_check_runs_total", check="flag", result=result)
        assert runs is not None, result
        assert runs >= 1, result
