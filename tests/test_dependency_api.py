"""The dependency checks' Python API: validation, and tcp/http/disk/memory checks end to end (in process
through ASGI and a core round, and served by `phoenix serve`). Real PostgreSQL and Redis are exercised in
tests/test_dependencies.py."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phoenix import Kernel
from tests.conftest import wait_until

PASSWORD = "s3cr3t-pw"


class _Upstream(http.server.BaseHTTPRequestHandler):
    """An upstream API: /health answers 200 "ok", /down 500, /moved redirects to /health."""

    def do_GET(self) -> None:
        status, headers, body = {
            "/health": (200, {}, b"ok"),
            "/down": (500, {}, b"down"),
            "/moved": (302, {"Location": "/health"}, b""),
        }.get(urllib.parse.urlsplit(self.path).path, (404, {}, b""))
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    """The port of an HTTP server on 127.0.0.1, in a thread of this process."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class Listener:
    """A socket listening on 127.0.0.1 that accepts connections and closes them, in a thread."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed
                return
            connection.close()

    def close(self) -> None:
        # shutdown wakes the blocked accept(); close alone would not.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join()


@pytest.fixture
def listening() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def check(kernel: Kernel) -> dict[str, Any]:
    """One uncached core round, after starting the kernel as a server would."""

    async def run() -> dict[str, Any]:
        kernel.start()
        return await kernel.check()

    return asyncio.run(run())


# --- Validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("register", "message"),
    [
        (lambda k: k.add_dependency("x", "mysql"), "unknown kind 'mysql' (expected one of postgres, redis"),
        (lambda k: k.add_dependency("db", "postgres"), "missing key 'dsn'"),
        (lambda k: k.add_dependency("db", "tcp", host="h", port=1, dns=1), "unknown key 'dns'"),
        (lambda k: k.add_tcp("db", "h", 0), "port must be between 1 and 65535, not 0"),
        (lambda k: k.add_tcp("db", "h", 70000), "port must be between 1 and 65535, not 70000"),
        (
            lambda k: k.add_http("api", f"https://app:{PASSWORD}@api/", ca_file="/nonexistent/ca.pem"),
            "ca_file: cannot read '/nonexistent/ca.pem'",
        ),
        (lambda k: k.add_http("api", "http://api/", expect_status=[600]), "expect_status: 600 is neither"),
        (lambda k: k.add_http("api", "http://api/", method="POST"), "method must be GET or HEAD, not 'POST'"),
        (
            lambda k: k.add_redis("cache", f"redis://:{PASSWORD}@cache/0", ca_file="/ca.pem"),
            "ca_file is only used with a rediss:// url",
        ),
        (
            lambda k: k.add_postgres("db", f"postgresql://app:{PASSWORD}@db/app?sslmode=verify-ca"),
            "dsn: sslmode=verify-ca needs ca_file",
        ),
        (
            lambda k: k.add_postgres("db", f"postgresql://app:{PASSWORD}@db/app?sslmode=allow"),
            "dsn: sslmode must be disable, prefer, require, verify-ca or verify-full",
        ),
        (
            lambda k: k.add_postgres("db", f"postgresql://app:{PASSWORD}@db:port/app"),
            "dsn: invalid connection",
        ),
        (lambda k: k.add_memory(threshold="high"), "threshold must be a number, not str"),
        (lambda k: k.add_memory(timeout_ms=0), "timeout_ms must be a whole number from 1"),
        (lambda k: k.add_memory(interval_ms=1.5), "interval_ms must be a whole number from 1"),
        (lambda k: k.add_memory(failures_before_unready=0), "failures_before_unready must be a whole number"),
        (lambda k: k.add_memory(threshold=0.5, warn_threshold=0.1), "warn_threshold must be a finite number"),
        (lambda k: k.add_dependency("d", "disk", path=object()), "path: object is not a setting"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_key(register: Any, message: str) -> None:
    kernel = Kernel()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}") as raised:
        register(kernel)
    assert PASSWORD not in str(raised.value)
    assert kernel.subsystems == []


def test_a_disk_path_must_exist_and_a_name_is_taken_once(tmp_path: Path) -> None:
    kernel = Kernel()
    with pytest.raises(ValueError, match=r"^path: cannot use '.*missing'"):
        kernel.add_disk("disk", tmp_path / "missing")
    kernel.add_disk("disk", tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        kernel.add_memory("disk")
    assert kernel.subsystems == ["disk"]


# --- End to end -----------------------------------------------------------------------------------------


def test_checks_of_each_kind_pass_and_fail_for_their_reasons_in_a_core_round(
    tmp_path: Path, upstream: int, listening: Listener
) -> None:
    kernel = Kernel()
    refused = closed_port()
    kernel.add_tcp("tcp", "127.0.0.1", listening.port)
    kernel.add_tcp("tcp_closed", "127.0.0.1", refused)
    kernel.add_http("api", f"http://127.0.0.1:{upstream}/health", body_contains="ok")
    kernel.add_http("api_down", f"http://app:{PASSWORD}@127.0.0.1:{upstream}/down?token={PASSWORD}")
    kernel.add_http("api_moved", f"http://127.0.0.1:{upstream}/moved", follow_redirects=True)
    kernel.add_dependency("disk", "disk", path=tmp_path, threshold=0.0)
    kernel.add_disk("disk_full", str(tmp_path), threshold=0.9999)
    kernel.add_memory(threshold=0.0)
    report = check(kernel)
    subsystems = report["subsystems"]
    assert {name for name, s in subsystems.items() if s["ready"]} == {
        "tcp",
        "api",
        "api_moved",
        "disk",
        "memory",
    }
    assert subsystems["tcp"]["metric"] == 1.0
    assert subsystems["tcp_closed"]["error"] == f"connection refused (127.0.0.1:{refused})"
    assert subsystems["api_down"]["error"] == "server answered 500 (expected 2xx)"
    assert 0.0 < subsystems["disk"]["metric"] <= 1.0
    assert subsystems["disk_full"]["error"].startswith("free space ")
    assert 0.0 < subsystems["memory"]["metric"] <= 1.0
    assert PASSWORD not in str(report)


def test_the_first_ready_through_asgi_reports_the_real_state(upstream: int, listening: Listener) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    kernel = Kernel(ready_ttl_ms=0)
    kernel.add_tcp("tcp", "127.0.0.1", listening.port)
    kernel.add_http("api", f"http://127.0.0.1:{upstream}/health", expect_status=[200])
    kernel.add_http("api_down", f"http://127.0.0.1:{upstream}/down", expect_status=["2xx", 404])
    with TestClient(Starlette(routes=[Mount("/probe", kernel.asgi())])) as client:
        ready = client.get("/probe/ready")
        assert ready.status_code == 503
        subsystems = ready.json()["subsystems"]
        assert (subsystems["tcp"]["status"], subsystems["api"]["status"]) == ("pass", "pass")
        assert subsystems["api_down"]["error"] == "server answered 500 (expected 2xx, 404)"
        assert client.get("/probe/ready/tcp").status_code == 200


def served() -> Kernel:
    """Served by `phoenix serve --app tests.test_dependency_api:served`: a TCP port, an upstream API,
    a disk and memory, from $PHOENIX_TEST_* (the server runs in another process)."""
    kernel = Kernel(ready_ttl_ms=0)
    kernel.add_tcp("tcp", "127.0.0.1", int(os.environ["PHOENIX_TEST_TCP_PORT"]), interval_ms=100)
    kernel.add_http("api", os.environ["PHOENIX_TEST_API"], interval_ms=100)
    kernel.add_disk("disk", os.environ["PHOENIX_TEST_DISK"], threshold=0.0)
    kernel.add_memory(threshold=0.0)
    return kernel


def test_a_served_kernel_watches_its_dependencies_in_the_background(
    serve: Any, tmp_path: Path, upstream: int, listening: Listener
) -> None:
    server = serve(
        "--app",
        "tests.test_dependency_api:served",
        env={
            "PHOENIX_TEST_TCP_PORT": str(listening.port),
            "PHOENIX_TEST_API": f"http://127.0.0.1:{upstream}/health",
            "PHOENIX_TEST_DISK": str(tmp_path),
        },
    )
    ready = server.request("/ready")
    assert ready.status == 200, ready.body
    assert set(ready.json()["subsystems"]) == {"tcp", "api", "disk", "memory"}
    listening.close()
    # A background run notices the port closed, whatever the requests.
    refused = f"connection refused (127.0.0.1:{listening.port})"
    wait_until(
        lambda: server.request("/ready/tcp").json().get("error") == refused,
        what="the tcp check to see its port closed",
        server=server,
    )
    assert server.request("/ready").status == 503
