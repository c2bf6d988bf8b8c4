"""End to end, the issue's stall test: an ``async def`` check blocks the served event loop with
``time.sleep(3)``. Meanwhile the probe port answers at once while the main port hangs, ``/live``,
``/ready`` and gRPC health say the loop is stalled, and both ports recover afterwards; with two workers,
the wedged one cannot hide behind the healthy one."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import Response, Server, serve_with_probe_port, wait_until
from .test_grpc_health import check, health_client

# Both ports get the same short client timeout during the stall: the probe port answers within it,
# the main port (its event loop wedged for 3 s) cannot.
QUICK_TIMEOUT_S = 1.0
LIVE_STALE_MS = 1000  # as tests.apps:stalling sets them
READY_STALE_MS = 500
# Fresh connections asked of a two-worker probe port: the kernel spreads them over both listeners,
# so all landing on one worker has a chance of 2 ** -20.
CONNECTIONS = 20
STALLED_LOG = re.compile(r" WARNING phoenix\.kernel: event loop stalled: no heartbeat for \d+ ms$", re.M)
BEATS_LOG = re.compile(r" INFO phoenix\.kernel: event loop beats again after \d+ ms$", re.M)


def answer(server: Server, path: str) -> Response | None:
    try:
        return server.request(path, timeout=5.0)
    except OSError:
        return None


def is_stalled(response: Response | None, stale_ms: int) -> bool:
    return (
        response is not None
        and response.status == 503
        and set(response.json()) == {"status", "loop_lag_ms"}
        and response.json()["status"] == "stalled"
        and response.json()["loop_lag_ms"] > stale_ms
    )


def is_alive(response: Response | None) -> bool:
    return (
        response is not None
        and response.status == 200
        and response.json()["status"] == "alive"
        and isinstance(response.json().get("loop_lag_ms"), int)
        and response.json()["loop_lag_ms"] < LIVE_STALE_MS
    )


def wait_for(server: Server, path: str, condition: Any, what: str) -> Response:
    found: Response = wait_until(
        lambda: (r := answer(server, path)) is not None and condition(r) and r, what=what, server=server
    )
    return found


class Trigger:
    """A main-port ``/ready`` on a thread of its own: its check round takes the flag file and wedges
    the loop of the worker that runs it; the request itself hangs until the stall ends."""

    def __init__(self, server: Server, flag: Path) -> None:
        flag.touch()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(server,))
        self._thread.start()

    def _run(self, server: Server) -> None:
        try:
            server.request("/ready", timeout=60)
        except BaseException as error:  # reported by join()
            self.error = error

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive(), "the request that stalled the loop never finished"
        assert self.error is None, self.error


def stalled_pids(server: Server) -> list[str]:
    return [run.removeprefix("stall:") for run in server.runs() if run.startswith("stall:")]


def test_a_stalled_loop_is_seen_on_the_probe_port_and_recovers(serve: Any, tmp_path: Path) -> None:
    flag = tmp_path / "stall"
    main, probe = serve_with_probe_port(
        serve, "--app", "tests.apps:stalling", env={"PHOENIX_TEST_STALL": str(flag)}
    )
    wait_for(probe, "/live", is_alive, "the loop to beat")
    assert is_alive(main.request("/live"))
    assert main.request("/ready").status == 200

    trigger = Trigger(main, flag)
    wait_until(lambda: stalled_pids(main), what="the check to wedge the loop", server=main)
    # The loop is wedged for 3 s from here: the probe port answers, the main port cannot.
    health = probe.request("/health", timeout=QUICK_TIMEOUT_S)
    assert (health.status, health.json()["status"]) == (200, "healthy")
    with pytest.raises(TimeoutError):
        main.request("/health", timeout=QUICK_TIMEOUT_S)
    live = wait_for(probe, "/live", lambda r: is_stalled(r, LIVE_STALE_MS), "/live to say stalled")
    assert live.json()["loop_lag_ms"] >= LIVE_STALE_MS
    wait_for(probe, "/ready", lambda r: is_stalled(r, READY_STALE_MS), "/ready to say stalled")
    pid = stalled_pids(main)[0]
    wait_for(probe, f"/ready/pid_{pid}", lambda r: is_stalled(r, READY_STALE_MS), "/ready/<name> stalled")
    with health_client(probe) as stub:
        assert check(stub, "") == "NOT_SERVING"

    trigger.join()
    for server in (probe, main):
        wait_for(server, "/live", is_alive, "/live to recover")
        wait_for(server, "/ready", lambda r: r.status == 200, "/ready to recover")
    with health_client(probe) as stub:
        assert check(stub, "") == "SERVING"
    wait_until(lambda: BEATS_LOG.search(main.logs()), what="the recovery to be logged", server=main)
    logs = main.logs()
    assert len(STALLED_LOG.findall(logs)) == 1, logs
    assert len(BEATS_LOG.findall(logs)) == 1, logs
    assert logs.index("event loop stalled") < logs.index("event loop beats again")


def test_a_wedged_worker_cannot_hide_behind_a_healthy_one(serve: Any, tmp_path: Path) -> None:
    flag = tmp_path / "stall"
    main, probe = serve_with_probe_port(
        serve, "--app", "tests.apps:stalling", "--workers", "2", env={"PHOENIX_TEST_STALL": str(flag)}
    )
    # Both workers listen on the probe port and their loops beat.
    answered: set[str] = set()

    def both_answer() -> bool:
        ready = answer(probe, "/ready")
        if ready is not None and ready.status == 200:
            answered.update(name for name in ready.json()["subsystems"] if name.startswith("pid_"))
        return len(answered) == 2

    wait_until(both_answer, what="both workers to answer on the probe port", server=main)
    wait_for(probe, "/live", is_alive, "the loops to beat")

    trigger = Trigger(main, flag)
    wait_until(lambda: stalled_pids(main), what="a check to wedge one worker's loop", server=main)
    wait_for(probe, "/live", lambda r: is_stalled(r, LIVE_STALE_MS), "/live to say stalled")
    # Whichever worker takes the connection (the healthy one too), the probe port says stalled.
    lives = [answer(probe, "/live") for _ in range(CONNECTIONS)]
    assert all(is_stalled(r, LIVE_STALE_MS) for r in lives), [r and r.body for r in lives]
    readies = [answer(probe, "/ready") for _ in range(CONNECTIONS)]
    assert all(is_stalled(r, READY_STALE_MS) for r in readies), [r and r.body for r in readies]
    assert len(stalled_pids(main)) == 1, "one worker, one stall"

    trigger.join()
    wait_for(probe, "/live", is_alive, "/live to recover")
    lives = [answer(probe, "/live") for _ in range(CONNECTIONS)]
    assert all(is_alive(r) for r in lives), [r and r.body for r in lives]
    wait_for(probe, "/ready", lambda r: r.status == 200, "/ready to recover")
