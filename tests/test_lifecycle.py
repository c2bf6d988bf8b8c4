"""End to end: a served kernel's life with real processes and real signals: SIGTERM at any moment,
a second SIGTERM, a worker killed as the OOM killer would, and the ASGI lifespan."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from typing import Any

import pytest

from .conftest import STARTUP_TIMEOUT_S, Response, Server, wait_until, wait_until_serving

# Bounds a wait on something that must happen; never a claim about how long it takes.
DEADLINE_S = 60.0


def ready_or_none(server: Server) -> Response | None:
    try:
        return server.request("/ready", timeout=5.0)
    except OSError:
        return None


def answering_pid(response: Response) -> int:
    """The worker that answered, from the ``worker_pid`` app's one subsystem (``pid_<pid>``)."""
    (name,) = response.json()["subsystems"]
    return int(name.removeprefix("pid_"))


def two_workers(server: Server) -> list[int]:
    def both() -> list[int] | None:
        pids = server.worker_pids()
        return pids if len(pids) == 2 else None

    pids: list[int] = wait_until(both, DEADLINE_S, what="two workers", server=server)
    return pids


def workers_serving(server: Server) -> int:
    """How many workers have begun serving so far, replacements included (Granian logs each)."""
    return len(re.findall(r"^\[INFO\] Started worker-\d+$", server.logs(), re.MULTILINE))


def start_draining(server: Server) -> None:
    """SIGTERM, as an orchestrator stops a pod, then waits for `/ready` to say so."""
    server.proc.send_signal(signal.SIGTERM)
    wait_until(
        lambda: server.request("/ready").status == 503,
        DEADLINE_S,
        what="/ready to say draining",
        server=server,
    )


def assert_clean_exit(server: Server) -> None:
    assert server.proc.wait(DEADLINE_S) == 0, server.logs()
    assert "Unexpected exit" not in server.logs()


# -- SIGTERM at any moment ---------------------------------------------------------------------------


@pytest.mark.parametrize("drain_ms", ["0", "500"])
def test_sigterm_while_workers_start_exits_0(serve: Any, drain_ms: str) -> None:
    """The issue's reproduction: both workers are inside a 1.5 s factory when SIGTERM arrives. With a
    drain, the drain signal reaches workers that cannot handle it yet; with or without one, the
    shutdown's SIGTERM reaches them before Granian has installed its own handlers."""
    server: Server = serve(
        "--app",
        "tests.apps:slow_start",
        "--workers",
        "2",
        env={"PHOENIX_SHUTDOWN_DRAIN_MS": drain_ms},
        wait=False,
    )
    wait_until(lambda: len(server.runs()) == 2, DEADLINE_S, what="both workers to be starting", server=server)
    server.proc.send_signal(signal.SIGTERM)
    assert_clean_exit(server)


def test_sigterm_while_the_server_loads_the_app_exits_0(serve: Any) -> None:
    """Before any worker: `phoenix serve` builds the kernel once itself, to refuse a bad --app."""
    server: Server = serve("--app", "tests.apps:slow_to_load", wait=False)
    wait_until(
        lambda: server.runs() == ["loading"],
        DEADLINE_S,
        what="the server to be loading the app",
        server=server,
    )
    server.proc.send_signal(signal.SIGTERM)
    assert_clean_exit(server)
    assert "Traceback" not in server.logs()


def test_sigterm_while_a_worker_starts_its_event_loop_exits_0(serve: Any) -> None:
    """Granian's handlers are in place but its loop does not run yet: uvloop records the signal and
    would act on it only when woken by another."""
    server: Server = serve("--app", "tests.apps:slow_rsgi_init", wait=False)
    wait_until(
        lambda: server.runs() == ["starting"], DEADLINE_S, what="the worker to be starting", server=server
    )
    server.proc.send_signal(signal.SIGTERM)
    assert_clean_exit(server)


def test_a_worker_that_finishes_starting_during_the_drain_drains(serve: Any) -> None:
    """The drain began while the worker was starting: once it serves, ``/ready`` says draining."""
    server: Server = serve(
        "--app",
        "tests.apps:slow_start",
        "--workers",
        "2",
        env={"PHOENIX_SHUTDOWN_DRAIN_MS": "60000"},
        wait=False,
    )
    wait_until(lambda: len(server.runs()) == 2, DEADLINE_S, what="both workers to be starting", server=server)
    server.proc.send_signal(signal.SIGTERM)
    first = wait_until(lambda: ready_or_none(server), DEADLINE_S, what="a worker to answer", server=server)
    assert (first.status, first.json()) == (503, {"status": "draining"})
    for _ in range(20):  # both workers, whichever the kernel hands each connection to
        answer = server.request("/ready")
        assert (answer.status, answer.json()) == (503, {"status": "draining"})
    server.proc.send_signal(signal.SIGTERM)  # the second signal ends the 60 s drain
    assert_clean_exit(server)


def test_second_sigterm_skips_the_rest_of_the_drain(serve: Any) -> None:
    server: Server = serve("--app", "tests.apps:empty", env={"PHOENIX_SHUTDOWN_DRAIN_MS": "60000"})
    start_draining(server)
    assert server.proc.poll() is None, "still serving during the drain"
    server.proc.send_signal(signal.SIGTERM)
    # Bounded well inside the 60 s drain: the wait ends when the server exits.
    assert server.proc.wait(30) == 0, server.logs()


# -- a worker killed ---------------------------------------------------------------------------------


def test_a_killed_worker_is_respawned_while_the_other_keeps_serving(serve: Any) -> None:
    server: Server = serve("--app", "tests.apps:worker_pid", "--workers", "2")
    victim, survivor = two_workers(server)
    wait_until(
        lambda: answering_pid(server.request("/ready")) == victim,
        DEADLINE_S,
        what="the victim to serve",
        server=server,
    )

    os.kill(victim, signal.SIGKILL)
    # Once reaped, all its threads are gone, and with them its listening socket: from then on no
    # connection can be handed to it. (Those handed to it before, as it died, are reset.)
    wait_until(
        lambda: victim not in server.worker_pids(), DEADLINE_S, what="the worker to be reaped", server=server
    )
    answers: list[int] = []

    def replacement_serves() -> bool:
        # Every request in this loop must be answered: the survivor serves while the victim respawns.
        response = server.request("/ready")
        assert response.status == 200, response
        answers.append(answering_pid(response))
        return answers[-1] not in (victim, survivor)

    wait_until(replacement_serves, DEADLINE_S, what="the replacement worker to serve", server=server)
    assert victim not in answers
    (replacement,) = set(server.worker_pids()) - {survivor}
    assert replacement == answers[-1]
    assert "Respawning worker" in server.logs()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(DEADLINE_S) == 0, server.logs()


def test_the_default_kernels_worker_is_respawned_on_the_same_store(serve: Any) -> None:
    server: Server = serve()
    wait_until_serving(server, "/ready")
    (victim,) = server.worker_pids()
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: server.worker_pids() not in ([], [victim]), DEADLINE_S, what="a new worker", server=server
    )
    # The dead process's lock on the store went with it: the new worker opens it and becomes ready.
    wait_until_serving(server, "/ready")
    assert server.request("/health").status == 200
    assert server.request("/startup").status == 200
    assert (server.data_dir / "plastic_ltm.redb").exists()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(DEADLINE_S) == 0, server.logs()


def test_a_worker_respawned_during_the_drain_drains(serve: Any) -> None:
    server: Server = serve(
        "--app", "tests.apps:worker_pid", "--workers", "2", env={"PHOENIX_SHUTDOWN_DRAIN_MS": "60000"}
    )
    victim, _ = two_workers(server)
    start_draining(server)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: workers_serving(server) == 3, DEADLINE_S, what="the replacement to serve", server=server
    )
    # The kernel hands each connection to either worker: 40 answers from both, every one draining.
    for _ in range(40):
        answer = server.request("/ready")
        assert (answer.status, answer.json()) == (503, {"status": "draining"})
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(DEADLINE_S) == 0, server.logs()


# -- the ASGI lifespan -------------------------------------------------------------------------------


async def lifespan_exchange(app: Any, *messages: str) -> list[dict[str, Any]]:
    """Runs a lifespan scope as an ASGI server would, sending ``messages`` in turn, each after the
    app answered the previous one; returns what the app sent."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, sent.put))
    received = []
    for message in messages:
        await inbox.put({"type": message})
        received.append(await asyncio.wait_for(sent.get(), STARTUP_TIMEOUT_S))
        if received[-1]["type"].endswith(".failed"):
            break
    await asyncio.wait_for(task, STARTUP_TIMEOUT_S)
    return received


def test_asgi_lifespan_reports_a_failed_start_up() -> None:
    from . import apps

    app = apps.start_fails().asgi()
    (failed,) = asyncio.run(lifespan_exchange(app, "lifespan.startup", "lifespan.shutdown"))
    assert failed["type"] == "lifespan.startup.failed"
    assert "RuntimeError: cannot start: the dependency is down" in failed["message"]


def test_asgi_lifespan_starts_and_stops() -> None:
    from . import apps

    kernel = apps.empty()
    messages = asyncio.run(lifespan_exchange(kernel.asgi(), "lifespan.startup", "lifespan.shutdown"))
    assert [m["type"] for m in messages] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
