"""Real Granian servers on free loopback ports, started and torn down per test."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:  # servers.py imports this module's helpers
    from .servers import Certificates, Postgres, Redis

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 30.0
# Only bounds a wait for something that must happen: generous, since the machine may be busy.
CONDITION_TIMEOUT_S = 30.0
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = CONDITION_TIMEOUT_S,
    *,
    what: str = "a condition",
    server: Server | None = None,
) -> T:
    """Polls ``condition`` until it returns something truthy, and returns that. The deadline only
    bounds the wait: reaching it means the condition never came true, and fails the test saying so
    (with ``server``'s log)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            logs = f"\n{server.logs()}" if server else ""
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}{logs}")
        time.sleep(0.02)


def pytest_addoption(parser: pytest.Parser) -> None:
    # Declared here, not in tests/load/, so that a plain `pytest --load-full` from the root accepts it.
    parser.addoption(
        "--load-full",
        action="store_true",
        default=False,
        help="load suite: run the seed's full durations (sustained load for 30 s instead of 10 s); "
        "also PHOENIX_LOAD_FULL=1",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def assert_json_error(response: Response, code: int, reason: str | None = None) -> None:
    """``response`` is Phoenix's JSON error: ``{"error": ..., "code": ..., "timestamp": ...}``."""
    assert response.status == code, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["error"], str), body
    assert body["error"], body
    if reason is not None:
        assert body["error"] == reason
    assert body["code"] == code
    assert RFC3339_UTC.match(body["timestamp"]), body


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    runs_path: Path
    data_dir: Path
    _log: Any = field(repr=False, default=None)

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 10.0
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        finally:
            conn.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def on_port(self, port: int) -> Server:
        """The same server, asked on another of its ports (its probe port)."""
        return dataclasses.replace(self, port=port)

    def runs(self) -> list[str]:
        return self.runs_path.read_text().split() if self.runs_path.exists() else []

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def exit_status(self, timeout: float = CONDITION_TIMEOUT_S) -> int:
        """Waits for the server to exit on its own; the timeout only bounds the wait."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server was still running after {timeout:.0f} s") from None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as an orchestrator would; the whole process group is killed if that fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def wait_for_answer(server: Server, path: str, wanted: Callable[[Response], bool], what: str) -> Response:
    """Requests ``path`` until an answer is ``wanted``, and returns that answer."""

    def answer() -> Response | None:
        response = server.request(path)
        return response if wanted(response) else None

    return wait_until(answer, what=what)


def wait_until_serving(server: Server, path: str = "/health", any_status: bool = False) -> None:
    """Polls ``path`` until it answers 200 (or anything at all, with ``any_status``)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.logs()}")
        try:
            if server.request(path, timeout=1.0).status == 200 or any_status:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server did not start:\n{server.logs()}")


def phoenix_env(*, suite_defaults: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a Phoenix process: no ``PHOENIX_*`` variable but ``extra`` and, unless
    ``suite_defaults`` is false (a test of the kernel's own settings), a drain of 0 ms."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    if suite_defaults:
        # Tests that exercise draining set their own; the rest should not wait 5 s at every stop.
        env["PHOENIX_SHUTDOWN_DRAIN_MS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def curl() -> str:
    from .debian import ensure_command

    return ensure_command("curl", "curl")


@pytest.fixture(scope="session")
def wrk() -> str:
    from .debian import ensure_command

    return ensure_command("wrk", "wrk")


@pytest.fixture(scope="session")
def promtool() -> str:
    from .debian import ensure_command

    return ensure_command("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_command() -> str:
    """The Prometheus server's command (Debian's ``prometheus``, which also brings ``promtool``)."""
    from .debian import ensure_command

    return ensure_command("prometheus", "prometheus")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One real PostgreSQL server for the session (see tests/servers.py), stopped and removed at its end."""
    from .servers import Postgres

    server = Postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres(postgres_server: Postgres) -> Postgres:
    """The session's PostgreSQL server, running: started again if an outage test left it stopped."""
    if not postgres_server.running:
        postgres_server.start()
    return postgres_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    """One real Redis server for the session (see tests/servers.py), stopped and removed at its end."""
    from .servers import Redis

    server = Redis()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis(redis_server: Redis) -> Redis:
    """The session's Redis server, running: started again if an outage test left it stopped."""
    if not redis_server.running:
        redis_server.start()
    return redis_server


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA made for the session and a server certificate it signed, for ``localhost`` and ``127.0.0.1``."""
    from .servers import make_certificates

    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="session")
def postgres_tls(certificates: Certificates) -> Iterator[Postgres]:
    """A second real PostgreSQL server for the session, with TLS on (see tests/servers.py). Its own, so
    that the plain one's tests stay plain; never stopped by a test."""
    from .servers import Postgres

    server = Postgres(certificates)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_tls(certificates: Certificates) -> Iterator[Redis]:
    """A second real Redis server for the session, speaking TLS only; never stopped by a test."""
    from .servers import Redis

    server = Redis(certificates)
    try:
        yield server
    finally:
        server.close()


def serve_with_probe_port(serve: Any, *args: str, **options: Any) -> tuple[Server, Server]:
    """``serve(*args, "--probe-port", P, **options)`` on a free loopback port P; returns the server
    seen on its main port and on its probe port, once both answer ``/health``."""
    probe_port = free_port()
    server: Server = serve(*args, "--probe-port", str(probe_port), **options)
    probe = server.on_port(probe_port)
    wait_until_serving(probe)
    return server, probe


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(*args, env={...})`` starts ``phoenix serve`` and returns a :class:`Server`; with
    ``suite_defaults=False``, with no setting but ``env`` and ``args`` (see :func:`phoenix_env`)."""
    servers: list[Server] = []

    def start(
        *args: str, env: dict[str, str] | None = None, wait: bool = True, suite_defaults: bool = True
    ) -> Server:
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        runs_path = tmp_path / f"runs-{port}.txt"
        data_dir = tmp_path / "data"
        log = log_path.open("wb")
        cmd = [sys.executable, "-m", "phoenix", "serve", "--port", str(port), "--data-dir", str(data_dir)]
        proc = subprocess.Popen(
            [*cmd, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=phoenix_env(suite_defaults=suite_defaults, PHOENIX_TEST_RUNS=str(runs_path), **(env or {})),
            cwd=tmp_path,
            start_new_session=True,
        )
        server = Server(proc, port, log_path, runs_path, data_dir, log)
        servers.append(server)
        if wait:
            wait_until_serving(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # a worker must never outlive its test
            os.killpg(server.proc.pid, signal.SIGKILL)
        server._log.close()
