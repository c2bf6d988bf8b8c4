"""End to end: the HTTP contract of a real `phoenix serve` (Granian, RSGI) on a loopback port."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    RFC3339_UTC,
    Response,
    Server,
    assert_json_error,
    wait_for_answer,
    wait_until,
    wait_until_serving,
)


def wait_ready(server: Server) -> Response:
    return wait_for_answer(server, "/ready", lambda r: r.status == 200, "/ready to answer 200")


def wait_initialised(server: Server) -> Response:
    """The first /ready answer in which no subsystem is still initialising (ready or not)."""

    def settled(response: Response) -> bool:
        subsystems = response.json().get("subsystems", {})
        return all(s.get("error") != "initialising" for s in subsystems.values())

    return wait_for_answer(server, "/ready", settled, "the default kernel to finish initialising")


def stamp(moment: datetime) -> datetime:
    """``moment`` truncated to the millisecond, as the server writes its timestamps."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def health_stamp(response: Response) -> datetime:
    return datetime.fromisoformat(response.json()["timestamp"].replace("Z", "+00:00"))


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
    launched = stamp(datetime.now(timezone.utc))
    server = serve()
    response = server.request("/health")
    answered = datetime.now(timezone.utc)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "healthy"
    assert isinstance(body["uptime_seconds"], int)
    assert RFC3339_UTC.match(body["timestamp"])
    # The current time in UTC: built after the server was launched, before its answer came back.
    assert launched <= health_stamp(response) <= answered, (launched, body["timestamp"], answered)


def test_health_is_served_from_a_100ms_cache(serve: Any) -> None:
    server = serve()

    def cached() -> Response | None:
        sent = stamp(datetime.now(timezone.utc))
        response = server.request("/health")
        # Built before this request was sent (at a coarser millisecond): served from the cache.
        return response if health_stamp(response) < sent else None

    first = health_stamp(wait_until(cached, what="a /health answer built before its request was sent"))

    def refreshed() -> Response | None:
        response = server.request("/health")
        return response if health_stamp(response) != first else None

    second = health_stamp(wait_until(refreshed, what="the /health cache entry to be refreshed"))
    # A new entry is built only once the previous one has expired: the server's own clocks show the
    # TTL, whatever the test's pace (both stamps are truncated to the millisecond).
    assert second - first >= timedelta(milliseconds=99), (first, second)


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
    wait_until(lambda: "RuntimeError: internal failure" in server.logs(), what="the traceback in the log")


def test_cold_burst_of_500_ready_requests_runs_each_check_once(serve: Any) -> None:
    server = serve("--app", "tests.apps:counting")
    statuses = asyncio.run(burst(server.port, "/ready", 500))
    assert statuses == [200] * 500
    assert server.runs() == ["counted"]


@pytest.mark.parametrize("app", ["three_async_overlapping", "three_sync_overlapping"])
def test_three_checks_run_in_one_round_not_one_after_another(serve: Any, app: str) -> None:
    # Each check waits until all three have started: run one after another, the first one fails.
    server = serve("--app", f"tests.apps:{app}")
    response = server.request("/ready", timeout=60)
    assert response.status == 200, response.body
    names = list(response.json()["subsystems"])
    assert len(names) == 3
    events = server.runs()  # "start:<name>" and "end:<name>", in the order they happened
    assert sorted(events) == sorted(f"{event}:{name}" for event in ("start", "end") for name in names)
    assert [event.split(":")[0] for event in events] == ["start"] * 3 + ["end"] * 3, events


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_hung_checks_answer_within_timeout_and_do_not_pile_up(serve: Any) -> None:
    server = serve("--app", "tests.apps:hung_counted")
    (worker,) = server.worker_pids()
    threads = []
    for _ in range(20):
        # Every request runs a round (TTL 0), and each one is answered: by the checks' deadline.
        response = server.request("/ready")
        threads.append(thread_count(worker))
        assert response.status == 503
        body = response.json()
        assert body["missing"] == ["hung_async", "hung_sync"]
        assert body["ready"] == ["fine"]
        for name in ("hung_async", "hung_sync"):
            assert body["subsystems"][name]["error"].startswith("timed out after 200 ms"), body
    # Later rounds join the pending runs instead of starting new ones.
    assert "earlier round" in body["subsystems"]["hung_async"]["error"]
    assert "earlier round" in body["subsystems"]["hung_sync"]["error"]
    assert sorted(server.runs()) == ["hung_async", "hung_sync"], "a hung check was started again"
    assert threads[-1] <= threads[1], threads


def test_corrupted_store_fails_plastic_ltm_but_health_stays_up(serve: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "plastic_ltm.redb").write_bytes(b"\x00not a redb file" * 1000)
    server = serve()
    # Once initialisation has finished, so that the failure is the store's and not start-up's.
    response = wait_initialised(server)
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
    response = wait_initialised(server)
    assert response.status == 503
    assert response.json()["missing"] == ["triune_conscience"]
    assert server.request("/health").status == 200
    wait_until(lambda: str(axioms) in server.logs(), what="the axioms file named in the log")
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


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(serve: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    server = serve("--app", "tests.apps:gated", env={"PHOENIX_TEST_GATE": str(gate)})
    result: dict[str, Response] = {}
    request = threading.Thread(target=lambda: result.update(r=server.request("/ready", timeout=60)))
    request.start()
    wait_until(lambda: "gated" in server.runs(), what="the request's round to start its check")
    server.proc.send_signal(signal.SIGTERM)
    # Granian's worker logs this once it has begun shutting down; the request is still held.
    wait_until(lambda: "Stopping worker-1" in server.logs(), what="the worker to begin its shutdown")
    assert request.is_alive()
    assert not result
    gate.touch()
    request.join(60)
    assert server.exit_status() == 0
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
