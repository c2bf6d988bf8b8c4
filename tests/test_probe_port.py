"""End to end: `phoenix serve --probe-port P`. The probe port answers every probe route as the main port
does (same status, content type and body but for times), over HTTP/1.1 and HTTP/2 with prior knowledge;
refuses oversized and malformed requests without harming either port; binds loopback only; and is
shared by every worker."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
from typing import Any

import httpx
import pytest

from .conftest import Response, Server, assert_json_error, serve_with_probe_port, wait_until

# Values that differ between two answers asked a moment apart: times, durations and the loop's lag.
VOLATILE_KEYS = frozenset({"timestamp", "uptime_seconds", "latency_ms", "time", "loop_lag_ms"})
VERBOSE_LATENCY = re.compile(rb"\(\d+(\.\d+)? ms\)")
BEARER = {"Authorization": "Bearer s3cret"}
# The probe listener refuses request heads over 16 KiB; the main port (Granian) takes this one.
OVERSIZED_HEADER = 64 * 1024
MOST_EXCLUDES = 64


def comparable(response: Response) -> object:
    """What must be equal between the two ports: the body without its times."""
    json_types = ("application/json", "application/health+json")
    if response.body and response.headers.get("content-type", "").startswith(json_types):
        return _without_volatile(response.json())
    return VERBOSE_LATENCY.sub(b"(N ms)", response.body)


def _without_volatile(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def assert_same_answer(
    main: Server, probe: Server, target: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Response:
    """Asks both ports; the probe port's answer, once checked equal to the main port's."""
    expected = main.request(target, method, headers)
    answer = probe.request(target, method, headers)
    for header in ("content-type", "allow"):
        assert answer.headers.get(header) == expected.headers.get(header), (target, header)
    assert answer.status == expected.status, (target, answer.body, expected.body)
    assert comparable(answer) == comparable(expected), target
    return answer


def raw_exchange(port: int, data: bytes) -> bytes:
    """Sends ``data`` on a fresh connection; returns all the server sent back before it closed (b""
    for a connection closed or reset without an answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        answer = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def assert_both_ports_answer(main: Server, probe: Server) -> None:
    assert main.proc.poll() is None, main.logs()
    assert main.request("/health").status == 200
    assert probe.request("/health").status == 200


# -- the same answers on both ports ------------------------------------------------------------------


def test_every_probe_route_answers_as_on_the_main_port(serve: Any) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:probes")
    health = assert_same_answer(main, probe, "/health")
    assert (health.status, health.json()["status"]) == (200, "healthy")
    live = assert_same_answer(main, probe, "/live")
    assert (live.status, live.json()["status"]) == (200, "alive")
    assert assert_same_answer(main, probe, "/startup").status == 200
    ready = assert_same_answer(main, probe, "/ready")
    assert (ready.status, ready.json()["missing"]) == (503, ["queue"])
    for name, status in (("db", 200), ("cache", 200), ("queue", 503)):
        assert assert_same_answer(main, probe, f"/ready/{name}").status == status
        assert assert_same_answer(main, probe, f"/ready/{name}?verbose").status == status
        assert assert_same_answer(main, probe, f"/ready/{name}", "HEAD").body == b""
    assert_json_error(assert_same_answer(main, probe, "/ready/nope"), 404)
    for path in ("/health", "/live", "/startup", "/ready"):
        assert assert_same_answer(main, probe, path, "HEAD").body == b""


def test_queries_and_formats_answer_as_on_the_main_port(serve: Any) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:probes")
    verbose = assert_same_answer(main, probe, "/ready?verbose")
    assert b"readyz check failed" in verbose.body
    for target, headers in (
        ("/ready?format=health+json", None),
        ("/ready", {"Accept": "application/health+json"}),
        ("/ready/db?format=health+json", None),
    ):
        answer = assert_same_answer(main, probe, target, headers=headers)
        assert answer.headers["content-type"] == "application/health+json", target
    excluded = assert_same_answer(main, probe, "/ready?exclude=queue")
    assert (excluded.status, list(excluded.json()["subsystems"])) == (200, ["db", "cache"])
    most = "/ready?" + "&".join(["exclude=queue"] * MOST_EXCLUDES)
    assert assert_same_answer(main, probe, most).status == 200
    assert_json_error(assert_same_answer(main, probe, most + "&exclude=queue"), 400)


def test_errors_are_the_same_json_errors(serve: Any) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:probes")
    assert_json_error(assert_same_answer(main, probe, "/nope"), 404, "Not Found")
    assert_json_error(assert_same_answer(main, probe, "/"), 404, "Not Found")
    for method in ("POST", "PUT", "DELETE"):
        answer = assert_same_answer(main, probe, "/ready", method)
        assert_json_error(answer, 405, "Method Not Allowed")
        assert answer.headers["allow"] == "GET, HEAD"


def test_details_follow_the_token_on_the_probe_port(serve: Any) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:guarded")
    anonymous = assert_same_answer(main, probe, "/ready")
    assert anonymous.json() == {"status": "ready"}
    bearer = assert_same_answer(main, probe, "/ready", headers=BEARER)
    assert bearer.json()["subsystems"]["db"]["metric"] == 0.9
    wrong = assert_same_answer(main, probe, "/ready", headers={"Authorization": "Bearer nope"})
    assert wrong.json() == {"status": "ready"}
    assert assert_same_answer(main, probe, "/ready/db").json() == {"status": "pass"}
    assert "metric" in assert_same_answer(main, probe, "/ready/db", headers=BEARER).json()


def test_probe_requests_go_to_the_request_log(serve: Any) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:empty")
    assert probe.request("/ready/only-on-the-probe-port").status == 404
    wait_until(
        lambda: re.search(r"phoenix\.api: GET /ready/only-on-the-probe-port 404", main.logs()),
        what="the probe port's request in the request log",
        server=main,
    )


# -- HTTP/2 ------------------------------------------------------------------------------------------


def test_http2_prior_knowledge_with_curl(serve: Any, curl: str) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:probes")
    for path, status in (("/health", 200), ("/ready/db", 200), ("/ready", 503), ("/nope", 404)):
        done = subprocess.run(
            [curl, "-sS", "--http2-prior-knowledge", "-w", r"\n%{http_version} %{http_code}",
             f"http://127.0.0.1:{probe.port}{path}"],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        body, _, outcome = done.stdout.rpartition(b"\n")
        assert outcome.decode() == f"2 {status}", (path, done.stdout, done.stderr)
        expected = main.request(path)
        assert _without_volatile(json.loads(body)) == _without_volatile(expected.json()), path


def test_http2_prior_knowledge_with_httpx(serve: Any) -> None:
    _, probe = serve_with_probe_port(serve, "--app", "tests.apps:guarded")
    with httpx.Client(http1=False, http2=True, base_url=f"http://127.0.0.1:{probe.port}") as client:
        # Several requests on one connection, as HTTP/2 streams.
        for _ in range(3):
            health = client.get("/health")
            assert (health.http_version, health.status_code) == ("HTTP/2", 200)
            assert health.json()["status"] == "healthy"
        ready = client.get("/ready", headers=BEARER)
        assert (ready.http_version, ready.status_code) == ("HTTP/2", 200)
        assert ready.json()["subsystems"]["db"]["metric"] == 0.9
        missing = client.get("/ready/nope")
        assert (missing.status_code, missing.json()["code"]) == (404, 404)
        post = client.post("/ready")
        assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")


# -- bad requests ------------------------------------------------------------------------------------


def test_oversized_headers_are_refused_and_both_ports_carry_on(serve: Any) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:empty")
    # `Connection: close`: each server closes once it has answered, which ends the read.
    big = b"X-Big: " + b"a" * OVERSIZED_HEADER
    head = b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + big + b"\r\n\r\n"
    answer = raw_exchange(probe.port, head)
    # 431 Request Header Fields Too Large, or the connection closed without an answer.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert_both_ports_answer(main, probe)
    # The same header on the main port reaches Phoenix (Granian's buffer holds it): the app is unharmed.
    assert raw_exchange(main.port, head).startswith(b"HTTP/1.1 200")
    assert_both_ports_answer(main, probe)


@pytest.mark.parametrize(
    "data",
    [
        b"NOT A REQUEST\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: test\r\n\r\n",
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"GET /health HTTP/1.1\r\nNo colon here\r\n\r\n",
    ],
    ids=["words", "no-target", "bad-version", "binary", "bad-header"],
)
def test_malformed_requests_are_refused_and_both_ports_carry_on(serve: Any, data: bytes) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:empty")
    answer = raw_exchange(probe.port, data)
    # Refused: an HTTP error from the listener (4xx or 505), or the connection closed; never answered.
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 or status == 505, answer[:200]
    assert_both_ports_answer(main, probe)


# -- where it listens --------------------------------------------------------------------------------


def other_addresses() -> list[str]:
    """Addresses of this machine that a listener bound to 127.0.0.1 must refuse: another loopback
    address, and the machine's non-loopback IPv4 addresses (if it has any)."""
    try:
        shown = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        shown = ""
    return ["127.0.0.2", *(a for a in shown.split() if ":" not in a and not a.startswith("127."))]


def test_the_probe_port_binds_loopback_only_by_default(serve: Any) -> None:
    _, probe = serve_with_probe_port(serve, "--app", "tests.apps:empty")
    for address in other_addresses():
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection((address, probe.port), timeout=10),
        ):
            pass
    assert probe.request("/health").status == 200


# -- several workers ---------------------------------------------------------------------------------


def test_two_workers_share_the_probe_port(serve: Any) -> None:
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:worker_pid", "--workers", "2")

    seen: set[int] = set()

    def both_answered() -> bool:
        answer = probe.request("/ready")
        assert answer.status == 200, answer.body
        (name,) = answer.json()["subsystems"]
        seen.add(int(name.removeprefix("pid_")))
        return len(seen) == 2

    # Each request is a new connection: the kernel spreads them over both workers' listeners.
    wait_until(both_answered, what="both workers to answer on the probe port", server=main)
    assert seen == set(main.worker_pids())


def test_another_server_cannot_take_a_probe_port_in_use(serve: Any) -> None:
    """SO_REUSEPORT lets a server's workers share the port; it must not let a second, unrelated server
    join them, or the kubelet's probes would be answered by whichever server the kernel picks."""
    first, probe = serve_with_probe_port(serve, "--app", "tests.apps:worker_pid")
    (first_worker,) = first.worker_pids()
    second: Server = serve("--app", "tests.apps:worker_pid", "--probe-port", str(probe.port), wait=False)
    assert second.exit_status() != 0, second.logs()
    assert f"cannot listen for probes on 127.0.0.1:{probe.port}" in second.logs()
    for _ in range(20):  # fresh connections: all answered by the first server
        (name,) = probe.request("/ready").json()["subsystems"]
        assert name == f"pid_{first_worker}"
