"""End to end: the HTTP contract of a real `phoenix serve` (Granian, RSGI) on a loopback port."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from .conftest import Response, Server, wait_until_serving

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def wait_ready(server: Server, timeout: float = 20.0) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        response = server.request("/ready")
        if response.status == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def assert_json_error(response: Response, code: int, reason: str) -> None:
    assert response.status == code
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == reason
    assert body["code"] == code
    assert RFC3339_UTC.match(body["timestamp"])


async def burst(port: int, path: str, n: int) -> list[int]:
    """n requests at once, each on its own connection; returns their status codes."""

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        return int(raw.split(b" ", 2)[1])

    return await asyncio.gather(*(one() for _ in range(n)))


def test_health_has_the_seed_shape(serve: Any) -> None:
    server = serve()
    response = server.request("/health")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "healthy"
    assert isinstance(body["uptime_seconds"], int)
    assert RFC3339_UTC.match(body["timestamp"])
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 5


def test_health_is_served_from_a_100ms_cache(serve: Any) -> None:
    server = serve()
    first = server.request("/health").json()["timestamp"]
    assert server.request("/health").json()["timestamp"] == first
    time.sleep(0.25)
    assert server.request("/health").json()["timestamp"] != first


def test_default_kernel_becomes_ready_with_all_three_subsystems(serve: Any) -> None:
    server = serve()
    response = wait_ready(server)
    assert response.status == 200, response.body
    body = response.json()
    assert body["status"] == "ready"
    assert list(body["subsystems"]) == ["plastic_ltm", "triune_conscience", "world_model"]
    for detail in body["subsystems"].values():
        assert detail["ready"] is True
        assert isinstance(detail["metric"], float)
        assert isinstance(detail["latency_ms"], int)
    assert (server.data_dir / "plastic_ltm.redb").exists()


def test_not_ready_lists_missing_and_ready_with_errors(serve: Any) -> None:
    server = serve("--app", "tests.apps:failing")
    response = server.request("/ready")
    assert response.status == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["missing"] == ["raises", "low"]
    assert body["ready"] == ["ok"]
    # The message is kept, minus the file-system path, which probe clients have no business seeing.
    assert body["subsystems"]["raises"]["error"] == "ValueError: database unreachable at <path>"
    assert body["subsystems"]["low"]["error"] == "metric 0.50 <= 0.90"
    assert body["subsystems"]["low"]["metric"] == 0.5
    assert "Traceback" not in response.body.decode()
    # The worker survived the raising check.
    assert server.request("/health").status == 200


def test_empty_kernel_is_ready(serve: Any) -> None:
    server = serve("--app", "tests.apps:empty")
    response = server.request("/ready")
    assert response.status == 200
    assert response.json() == {"status": "ready", "subsystems": {}}


def test_unknown_path_is_a_json_404(serve: Any) -> None:
    server = serve("--app", "tests.apps:empty")
    for path in ("/", "/healthz", "/ready/a/b"):
        assert_json_error(server.request(path), 404, "Not Found")
        assert_json_error(server.request(path, method="POST"), 404, "Not Found")


def test_other_methods_are_a_json_405_with_allow(serve: Any) -> None:
    server = serve("--app", "tests.apps:empty")
    for path in ("/health", "/ready"):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            response = server.request(path, method=method)
            assert_json_error(response, 405, "Method Not Allowed")
            assert response.headers["allow"] == "GET, HEAD"


def test_head_gets_the_status_without_a_body(serve: Any) -> None:
    server = serve("--app", "tests.apps:failing")
    health = server.request("/health", method="HEAD")
    assert (health.status, health.body) == (200, b"")
    ready = server.request("/ready", method="HEAD")
    assert (ready.status, ready.body) == (503, b"")


def test_internal_error_is_a_json_500_without_traceback(serve: Any) -> None:
    server = serve("--app", "tests.apps:broken", wait=False)
    wait_until_serving(server, any_status=True)
    response = server.request("/health")
    assert_json_error(response, 500, "Internal Server Error")
    assert b"Traceback" not in response.body
    assert b"/private/detail" not in response.body
    # The traceback goes to the log, where operators look.
    deadline = time.monotonic() + 5
    while "RuntimeError: internal failure" not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "RuntimeError: internal failure" in server.logs()


def test_cold_burst_of_500_ready_requests_runs_each_check_once(serve: Any) -> None:
    server = serve("--app", "tests.apps:counting")
    statuses = asyncio.run(burst(server.port, "/ready", 500))
    assert statuses == [200] * 500
    assert server.runs() == ["counted"]


@pytest.mark.parametrize("app", ["three_async_100ms", "three_sync_100ms"])
def test_three_100ms_checks_take_one_round_not_three(serve: Any, app: str) -> None:
    server = serve("--app", f"tests.apps:{app}")
    started = time.perf_counter()
    response = server.request("/ready")
    elapsed = time.perf_counter() - started
    assert response.status == 200, response.body
    assert elapsed < 0.2, f"{elapsed:.3f}s"
    for detail in response.json()["subsystems"].values():
        assert 90 <= detail["latency_ms"] < 200


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_hung_checks_answer_within_timeout_and_do_not_pile_up(serve: Any) -> None:
    server = serve("--app", "tests.apps:hung")
    (worker,) = server.worker_pids()
    timings = []
    threads = []
    for _ in range(20):
        started = time.perf_counter()
        response = server.request("/ready")
        timings.append(time.perf_counter() - started)
        threads.append(thread_count(worker))
        assert response.status == 503
        body = response.json()
        assert body["missing"] == ["hung_async", "hung_sync"]
        assert body["ready"] == ["fine"]
        assert body["subsystems"]["hung_sync"]["error"].startswith("timed out after 200 ms")
    assert max(timings) < 0.2 + 0.1, [round(t, 3) for t in timings]
    # Later rounds join the pending runs instead of starting new ones.
    assert "earlier round" in body["subsystems"]["hung_async"]["error"]
    assert threads[-1] <= threads[1], threads


def test_corrupted_store_fails_plastic_ltm_but_health_stays_up(serve: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "plastic_ltm.redb").write_bytes(b"\x00not a redb file" * 1000)
    server = serve()
    time.sleep(0.5)  # let initialisation finish, so the failure is the store and not start-up
    response = server.request("/ready")
    assert response.status == 503
    body = response.json()
    assert body["missing"] == ["plastic_ltm"]
    assert body["ready"] == ["triune_conscience", "world_model"]
    assert body["subsystems"]["plastic_ltm"]["error"]
    assert server.request("/health").status == 200


def test_malformed_axioms_file_is_logged_by_name_and_service_runs(serve: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    axioms = data / "axioms.json"
    axioms.write_text('{"axioms": [ {"id": "honesty", ')
    server = serve()
    time.sleep(0.5)
    response = server.request("/ready")
    assert response.status == 503
    assert response.json()["missing"] == ["triune_conscience"]
    assert server.request("/health").status == 200
    log_lines = [line for line in server.logs().splitlines() if str(axioms) in line]
    assert len(log_lines) == 1, server.logs()
    assert "invalid JSON" in log_lines[0]


def test_requests_are_logged_to_phoenix_api(serve: Any) -> None:
    server = serve("--app", "tests.apps:empty")
    server.request("/health")
    server.request("/nope", method="POST")
    server.stop()
    logs = server.logs()
    assert re.search(r" INFO phoenix\.api: GET /health 200 \d+\.\d+ms$", logs, re.M), logs
    assert re.search(r" INFO phoenix\.api: POST /nope 404 \d+\.\d+ms$", logs, re.M), logs


def test_request_log_can_be_switched_off(serve: Any) -> None:
    server = serve("--app", "tests.apps:empty", env={"PHOENIX_REQUEST_LOG": "false"})
    server.request("/health")
    server.stop()
    assert "phoenix.api" not in server.logs()


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(serve: Any) -> None:
    server = serve("--app", "tests.apps:slow_ready")
    result: dict[str, Response] = {}
    request = threading.Thread(target=lambda: result.update(r=server.request("/ready")))
    request.start()
    time.sleep(0.3)  # the request is waiting on its 1 s round
    server.proc.send_signal(signal.SIGTERM)
    request.join(10)
    assert server.proc.wait(15) == 0
    assert result["r"].status == 200


def test_asgi_mount_in_a_real_granian_asgi_server(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .conftest import free_port, phoenix_env

    port = free_port()
    log = (tmp_path / "asgi.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
         "--factory", "tests.apps:starlette_app"],
        stdout=log, stderr=subprocess.STDOUT, env=phoenix_env(), start_new_session=True,
    )  # fmt: skip
    server = Server(proc, port, tmp_path / "asgi.log", tmp_path / "runs", tmp_path, log)
    try:
        wait_until_serving(server, "/probe/health")
        assert server.request("/").body == b"home"
        health = server.request("/probe/health")
        assert health.status == 200
        assert health.json()["status"] == "healthy"
        ready = server.request("/probe/ready")
        assert ready.status == 200
        assert ready.json()["subsystems"]["db"]["metric"] == 0.9
        assert_json_error(server.request("/probe/nope"), 404, "Not Found")
        assert_json_error(server.request("/probe/ready", method="POST"), 405, "Method Not Allowed")
    finally:
        assert server.stop() == 0
        log.close()
