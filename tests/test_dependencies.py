"""End to end, issue 11: the native dependency checks, added with the typed Python API
(``kernel.add_postgres`` and the rest, see ``tests.apps:dependencies``) in a served kernel, against real
PostgreSQL and Redis servers (tests/servers.py), a listener that never answers, an HTTP server answering
500, a disk threshold, and a served event loop blocked (with the GIL held) while every kind runs on; and
TLS, against PostgreSQL, Redis and an HTTPS server with a certificate from the session's own CA."""

from __future__ import annotations

import http.server
import json
import re
import secrets
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, serve_with_probe_port, wait_for_answer, wait_until
from .servers import Certificates, Postgres, Redis

# Short periods, so that several runs pass in a moment; deadlines generous enough for a busy machine.
INTERVAL_MS = 100
TIMEOUT_MS = 2000
# A deadline that a listener which never answers reaches quickly.
SHORT_TIMEOUT_MS = 300
RUNS = re.compile(r'^phoenix_check_runs_total\{check="([^"]+)",result="([^"]+)"\} (\d+)$', re.M)
DATABASES = ["postgres", "redis"]


def dependency(kind: str, name: str, **arguments: Any) -> list[Any]:
    """One check for ``tests.apps:dependencies``: ``kernel.add_<kind>(name, **arguments)``."""
    return [kind, name, arguments]


def database_check(database: Postgres | Redis, password: str | None = None, **common: Any) -> list[Any]:
    """A check named ``db`` of ``database``, with its password or ``password``."""
    common = {"interval_ms": INTERVAL_MS, "timeout_ms": TIMEOUT_MS, **common}
    if isinstance(database, Postgres):
        return dependency("postgres", "db", dsn=database.dsn(password), **common)
    return dependency("redis", "db", url=database.url(password), **common)


def serve_dependencies(serve: Any, *checks: list[Any]) -> Server:
    server: Server = serve(
        "--app", "tests.apps:dependencies", env={"PHOENIX_TEST_DEPENDENCIES": json.dumps(checks)}
    )
    return server


def detail(server: Server, name: str) -> dict[str, Any]:
    """``/ready/<name>``: the subsystem's status, metric and error."""
    response = server.request(f"/ready/{name}")
    body: dict[str, Any] = response.json()
    assert response.status == (200 if body["status"] in ("pass", "warn") else 503), (response.status, body)
    return body


def wait_for_status(server: Server, name: str, status: str, cause: str = "") -> dict[str, Any]:
    """Waits until ``name`` reports ``status`` with an error containing ``cause`` (case-insensitive)."""

    def reached() -> dict[str, Any] | None:
        found = detail(server, name)
        return found if found["status"] == status and cause in found.get("error", "").lower() else None

    reason = f" naming {cause!r}" if cause else ""
    return wait_until(reached, what=f"{name} to {status}{reason}", server=server)


def runs(server: Server, name: str, result: str | None = None) -> int:
    """How many runs of ``name`` ended with ``result`` (any, by default), from ``/metrics``."""
    text = server.request("/metrics").body.decode()
    return sum(
        int(count) for check, ended, count in RUNS.findall(text) if check == name and result in (None, ended)
    )


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest) -> Postgres | Redis:
    """Each real database server in turn, running."""
    server: Postgres | Redis = request.getfixturevalue(request.param)
    return server


def test_a_database_check_fails_while_its_server_is_down_and_recovers_without_a_restart(
    database: Postgres | Redis, serve: Any
) -> None:
    server = serve_dependencies(serve, database_check(database))
    passed = wait_for_status(server, "db", "pass")
    assert passed["metric"] == 1.0
    workers = server.worker_pids()

    database.stop()
    passes_at_stop = runs(server, "db", "pass")
    # Every run from here fails: only the run in flight at the stop may still have passed, so the
    # first or second run after it (within an interval plus a timeout) fails.
    wait_for_status(server, "db", "fail")
    assert runs(server, "db", "pass") <= passes_at_stop + 1
    # Once the kept connection is gone, reconnecting names the cause. (While PostgreSQL shuts down, a
    # connection may still open and be turned away, "server refused: ... shutting down": not this.)
    failed = wait_for_status(server, "db", "fail", cause="connection refused")
    assert f"127.0.0.1:{database.port}" in failed["error"], failed
    assert failed["metric"] is None

    database.start()
    wait_for_status(server, "db", "pass")
    assert server.worker_pids() == workers, "the server must recover without restarting"
    wait_until(lambda: "db: fail -> pass" in server.logs(), what="the recovery to be logged", server=server)


# Every answer that carries a subsystem's error, or anything else about it (``{name}``: the subsystem).
ANSWERS = [
    ("/ready", {}),
    ("/ready/{name}", {}),
    ("/ready?verbose", {}),
    ("/ready", {"Accept": "application/health+json"}),
    ("/status?format=json", {}),
    ("/metrics", {}),
]


def test_a_wrong_password_fails_naming_authentication_and_is_never_shown(
    database: Postgres | Redis, serve: Any
) -> None:
    wrong = f"wrong{secrets.token_hex(8)}"
    server = serve_dependencies(serve, database_check(database, password=wrong))
    failed = wait_for_status(server, "db", "fail", cause="auth")
    assert "timed out" not in failed["error"], failed
    for path, headers in ANSWERS:
        body = server.request(path.format(name="db"), headers=headers).body
        assert b"db" in body, (path, body)
        for secret in (wrong, database.password):
            assert secret.encode() not in body, (path, body)
    server.stop()
    logs = server.logs()
    assert "db: pending -> fail" in logs, logs
    assert wrong not in logs, logs
    assert database.password not in logs, logs


class SilentListener:
    """A TCP server that accepts connections, reads what they send and never answers. It counts the
    connections it accepted, and the most it ever held open at once."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)  # so that the accepting thread notices close()
        self.port: int = self._socket.getsockname()[1]
        self._open: list[socket.socket] = []
        self.accepted = 0
        self.most_open = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            # A client closes its connection before it opens the next (on loopback the FIN is
            # delivered before the SYN is sent): drop the closed ones before counting the new one.
            self._open = [held for held in self._open if _still_open(held)]
            self._open.append(conn)
            self.accepted += 1
            self.most_open = max(self.most_open, len(self._open))

    def close(self) -> None:
        self._closing.set()
        self._thread.join(10)
        self._socket.close()
        for conn in self._open:
            conn.close()


def _still_open(conn: socket.socket) -> bool:
    """Whether the client has not closed ``conn``; reads (and discards) what it sent."""
    while True:
        try:
            if not conn.recv(4096, socket.MSG_DONTWAIT):
                conn.close()
                return False
        except BlockingIOError:
            return True
        except OSError:  # reset
            conn.close()
            return False


@pytest.fixture
def silent_listener() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


def silent_check(kind: str, port: int) -> list[Any]:
    timing = {"interval_ms": INTERVAL_MS, "timeout_ms": SHORT_TIMEOUT_MS}
    if kind == "postgres":
        return dependency(kind, "db", dsn=f"postgresql://app@127.0.0.1:{port}/app", **timing)
    if kind == "redis":
        return dependency(kind, "db", url=f"redis://127.0.0.1:{port}/0", **timing)
    return dependency(kind, "db", url=f"http://127.0.0.1:{port}/health", **timing)


@pytest.mark.parametrize("kind", ["postgres", "redis", "http"])
def test_a_listener_that_never_answers_times_out_with_one_pending_run(
    kind: str, silent_listener: SilentListener, serve: Any
) -> None:
    server = serve_dependencies(serve, silent_check(kind, silent_listener.port))
    failed = wait_for_status(server, "db", "fail", cause="timed out")
    assert failed["error"].startswith(f"timed out after {SHORT_TIMEOUT_MS} ms"), failed
    # Several intervals later: never more than one connection open, at most one per run.
    wait_until(lambda: runs(server, "db", "timeout") >= 5, what="several runs to time out", server=server)
    accepted = silent_listener.accepted
    assert accepted <= runs(server, "db") + 1  # the run in flight
    assert silent_listener.most_open == 1, (silent_listener.most_open, accepted)


class _Answers(http.server.BaseHTTPRequestHandler):
    """``/ok`` answers 200, anything else 500."""

    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 500
        body = b"fine" if status == 200 else b"broken"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows the test's own output


@pytest.fixture
def http_upstream() -> Iterator[int]:
    """A tiny HTTP server in a thread (``/ok`` 200, else 500); yields its port."""
    yield from _served(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers))


def _served(upstream: http.server.HTTPServer) -> Iterator[int]:
    """Serves ``upstream`` from a thread for as long as the calling fixture lasts; yields its port."""
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    yield upstream.server_address[1]
    upstream.shutdown()
    upstream.server_close()
    thread.join(10)


def test_an_http_check_fails_naming_an_unexpected_status(http_upstream: int, serve: Any) -> None:
    base = f"http://127.0.0.1:{http_upstream}"
    server = serve_dependencies(
        serve,
        dependency("http", "broken", url=f"{base}/broken", interval_ms=INTERVAL_MS),
        dependency("http", "upstream", url=f"{base}/ok", interval_ms=INTERVAL_MS),
    )
    failed = wait_for_status(server, "broken", "fail", cause="500")
    assert failed["metric"] is None
    assert wait_for_status(server, "upstream", "pass")["metric"] == 1.0


UNTRUSTED = "TLS handshake failed: certificate not trusted (unknown issuer)"
# Answers 1 over TLS and fails (division by zero) over a plain connection: proof of which one a check used.
TLS_ONLY_QUERY = "SELECT 1 / ssl::int FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def test_postgres_over_tls_verifies_what_its_sslmode_says(
    postgres_tls: Postgres, certificates: Certificates, serve: Any
) -> None:
    settings = {"interval_ms": INTERVAL_MS, "timeout_ms": TIMEOUT_MS, "query": TLS_ONLY_QUERY}
    ca_file = str(certificates.ca_file)
    server = serve_dependencies(
        serve,
        dependency("postgres", "require", dsn=postgres_tls.dsn(sslmode="require"), **settings),
        dependency(
            "postgres",
            "verify_full",
            dsn=postgres_tls.dsn(sslmode="verify-full"),
            ca_file=ca_file,
            **settings,
        ),
        dependency("postgres", "untrusted", dsn=postgres_tls.dsn(sslmode="verify-full"), **settings),
        dependency("postgres", "plain", dsn=postgres_tls.dsn(sslmode="disable"), **settings),
    )
    assert wait_for_status(server, "require", "pass")["metric"] == 1.0
    assert wait_for_status(server, "verify_full", "pass")["metric"] == 1.0
    # The session's CA is not among the system's roots.
    assert wait_for_status(server, "untrusted", "fail", cause="certificate")["error"] == UNTRUSTED
    # The query does tell: without TLS, it fails.
    assert "division by zero" in wait_for_status(server, "plain", "fail")["error"]


def test_rediss_is_verified_against_the_ca_file(
    redis_tls: Redis, certificates: Certificates, serve: Any
) -> None:
    timing = {"interval_ms": INTERVAL_MS, "timeout_ms": TIMEOUT_MS}
    server = serve_dependencies(
        serve,
        dependency("redis", "verified", url=redis_tls.url(), ca_file=str(certificates.ca_file), **timing),
        dependency("redis", "untrusted", url=redis_tls.url(), **timing),
    )
    assert wait_for_status(server, "verified", "pass")["metric"] == 1.0
    failed = wait_for_status(server, "untrusted", "fail", cause="certificate")
    assert failed["error"] == UNTRUSTED
    assert redis_tls.password not in json.dumps(failed)


class _QuietHTTPServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the untrusted check's handshakes fail on purpose


@pytest.fixture
def https_upstream(certificates: Certificates) -> Iterator[int]:
    """:func:`http_upstream` over TLS, with the session CA's certificate; yields its port."""
    upstream = _QuietHTTPServer(("127.0.0.1", 0), _Answers)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.cert_file, certificates.key_file)
    # The handshake in each request's thread, not in the accepting one.
    upstream.socket = context.wrap_socket(upstream.socket, server_side=True, do_handshake_on_connect=False)
    yield from _served(upstream)


def test_https_is_verified_against_the_ca_file(
    https_upstream: int, certificates: Certificates, serve: Any
) -> None:
    url = f"https://127.0.0.1:{https_upstream}/ok"
    server = serve_dependencies(
        serve,
        dependency("http", "verified", url=url, ca_file=str(certificates.ca_file), interval_ms=INTERVAL_MS),
        dependency("http", "untrusted", url=url, interval_ms=INTERVAL_MS),
    )
    assert wait_for_status(server, "verified", "pass")["metric"] == 1.0
    assert wait_for_status(server, "untrusted", "fail", cause="certificate")["error"] == UNTRUSTED


def test_a_disk_check_fails_above_its_free_space_and_passes_by_default(tmp_path: Path, serve: Any) -> None:
    server = serve_dependencies(
        serve,
        dependency("disk", "disk_full", path=str(tmp_path), threshold=0.9999, interval_ms=INTERVAL_MS),
        dependency("disk", "disk", path=str(tmp_path), interval_ms=INTERVAL_MS),
    )
    full = wait_for_status(server, "disk_full", "fail")
    fine = wait_for_status(server, "disk", "pass")
    # The same measurement, judged against two thresholds.
    assert 0.05 < fine["metric"] <= 0.9999, fine
    assert full["threshold"] == 0.9999
    assert fine["threshold"] == 0.05


def every_kind(postgres: Postgres, redis: Redis, http_port: int, path: Path) -> list[list[Any]]:
    """A passing check of each kind, named after it (disk and memory with low thresholds: their verdict
    on this machine is not the point)."""
    timing = {"interval_ms": INTERVAL_MS, "timeout_ms": TIMEOUT_MS}
    low = {"threshold": 0.001, "warn_threshold": 0.002}
    return [
        dependency("postgres", "postgres", dsn=postgres.dsn(), **timing),
        dependency("redis", "redis", url=redis.url(), **timing),
        dependency("http", "http", url=f"http://127.0.0.1:{http_port}/ok", **timing),
        dependency("tcp", "tcp", host="127.0.0.1", port=postgres.port, **timing),
        dependency("disk", "disk", path=str(path), **low, **timing),
        dependency("memory", "memory", **low, **timing),
    ]


KINDS = ["postgres", "redis", "http", "tcp", "disk", "memory"]


def run_counts(probe: Server) -> dict[str, int]:
    return {kind: runs(probe, kind) for kind in KINDS}


def latest(probe: Server) -> dict[str, dict[str, Any]]:
    """Each subsystem's latest run, from the status page's data: its history's newest mark."""
    data = probe.request("/status?format=json").json()
    return {s["name"]: s["history"][-1] for s in data["subsystems"] if s["history"]}


def round_detail(probe: Server, name: str) -> dict[str, Any]:
    """``name``'s result in the newest round, from the status page's data."""
    data = probe.request("/status?format=json").json()
    found: dict[str, Any] = next(s for s in data["subsystems"] if s["name"] == name)
    return found


def block(main: Server, probe: Server) -> None:
    """Starts rounds (each a ``/ready`` on the probe port) until one takes the flag and blocks the loop."""

    def blocked() -> bool:
        probe.request("/ready")
        return "block:start" in main.runs()

    wait_until(blocked, what="the loop to block", server=main)


def release(gate: Path) -> None:
    """Writes the byte the blocked loop waits for, in place: the worker maps the file, and truncating
    it under the map would kill the worker (SIGBUS)."""
    with gate.open("r+b") as file:
        file.write(b"\1")


@pytest.mark.parametrize("how", ["sleep", "gil"])
def test_every_kind_meets_its_deadline_while_the_event_loop_is_blocked(
    how: str, postgres: Postgres, redis: Redis, http_upstream: int, serve: Any, tmp_path: Path
) -> None:
    flag, gate = tmp_path / "block", tmp_path / "gate"
    gate.write_bytes(b"\0")
    main, probe = serve_with_probe_port(
        serve,
        "--app",
        "tests.apps:blocked_dependencies",
        env={
            "PHOENIX_TEST_DEPENDENCIES": json.dumps(every_kind(postgres, redis, http_upstream, tmp_path)),
            "PHOENIX_TEST_BLOCK_FLAG": str(flag),
            "PHOENIX_TEST_BLOCK_GATE": str(gate),
            "PHOENIX_TEST_BLOCK": how,
        },
    )
    for kind in KINDS:
        wait_for_status(probe, kind, "pass")

    flag.touch()
    block(main, probe)
    try:
        wait_until(
            lambda: probe.request("/live").status == 503, what="/live to say the loop is stalled", server=main
        )
        before = run_counts(probe)
        before_python = runs(probe, "python", "pass")
        redis.stop()
        # While the loop is blocked, each check runs on and meets its deadline: redis fails, naming
        # the cause, every other kind passes again and again.
        wait_until(
            lambda: all(count >= before[kind] + 3 for kind, count in run_counts(probe).items()),
            what="every kind to run three more times",
            server=main,
        )
        wait_until(lambda: latest(probe)["redis"]["status"] == "fail", what="redis to fail", server=main)
        marks = latest(probe)
        assert {kind: marks[kind]["status"] for kind in KINDS} == {
            **{kind: "pass" for kind in KINDS},
            "redis": "fail",
        }
        # Rounds (started by the probe port's requests) still carry each check's error.
        wait_until(
            lambda: "refused" in round_detail(probe, "redis").get("error", ""),
            what="redis's error to name the cause",
            server=main,
        )
        redis.start()
        wait_until(lambda: latest(probe)["redis"]["status"] == "pass", what="redis to pass", server=main)
        assert {kind: runs(probe, kind, "timeout") for kind in KINDS} == dict.fromkeys(KINDS, 0)
        # The contrast: a Python check (on a thread of its own) runs on while the loop sleeps, and
        # cannot run while the GIL is held.
        if how == "gil":
            wait_until(lambda: runs(probe, "python", "timeout") > 0, what="python to time out", server=main)
        else:
            wait_until(lambda: runs(probe, "python", "pass") > before_python, what="python", server=main)
        assert "block:end" not in main.runs(), "the loop must still be blocked"
    finally:
        release(gate)
    wait_until(lambda: "block:end" in main.runs(), what="the loop to be released", server=main)
    wait_until(lambda: main.request("/live").status == 200, what="the main port to answer", server=main)


def test_a_config_file_declares_a_check_of_each_kind(
    postgres: Postgres, redis: Redis, http_upstream: int, serve: Any, tmp_path: Path
) -> None:
    config = tmp_path / "phoenix.toml"
    # The password reaches the DSN from the environment, as a deployment's secret would.
    config.write_text(
        f"""
check_timeout_ms = {TIMEOUT_MS}

[[check]]
name = "postgres"
kind = "postgres"
dsn = "postgresql://phoenix_test:${{TEST_DB_PASSWORD}}@127.0.0.1:{postgres.port}/phoenix_test"
interval_ms = {INTERVAL_MS}

[[check]]
name = "redis"
kind = "redis"
url = "${{TEST_REDIS_URL}}"
timeout_ms = {TIMEOUT_MS}

[[check]]
name = "http"
kind = "http"
url = "http://127.0.0.1:{http_upstream}/ok"
expect_status = [200, "2xx"]
body_contains = "fine"

[[check]]
name = "tcp"
kind = "tcp"
host = "127.0.0.1"
port = {postgres.port}

[[check]]
name = "disk"
kind = "disk"
path = "{tmp_path}"
threshold = 0.01
warn_threshold = 0.02

[[check]]
name = "memory"
kind = "memory"
threshold = 0.001
warn_threshold = 0.002
failures_before_unready = 2
"""
    )
    server = serve(
        "--config", str(config), env={"TEST_DB_PASSWORD": postgres.password, "TEST_REDIS_URL": redis.url()}
    )
    for kind in KINDS:
        assert wait_for_status(server, kind, "pass")["metric"] > 0.0
    wait_for_answer(server, "/ready", lambda r: r.status == 200, "the server to be ready")
    for path, headers in ANSWERS:
        body = server.request(path.format(name="postgres"), headers=headers).body
        assert postgres.password.encode() not in body, (path, body)
        assert redis.password.encode() not in body, (path, body)
