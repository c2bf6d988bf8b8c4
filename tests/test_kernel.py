"""The Python API, in-process: registering checks, the native subsystems' handles, ASGI mounting."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import phoenix
from phoenix import Kernel, default_kernel
from phoenix.app import _ASGIRequest

NO_REQUEST = _ASGIRequest("", {})


def check(kernel: Kernel) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        kernel.start()
        await asyncio.wait_for(kernel.wait_initialised(), 10)
        assert kernel.initialised
        return await kernel.check()

    return asyncio.run(run())


def test_version_is_exposed() -> None:
    assert phoenix.__version__ == "0.1.0"


def test_sync_and_async_checks_with_float_and_bool_metrics() -> None:
    kernel = Kernel()

    @kernel.subsystem("a", threshold=0.5)
    async def a() -> float:
        return 0.75

    @kernel.subsystem("b", threshold=0.5)
    def b() -> bool:
        return True

    @kernel.subsystem("c", threshold=0.5)
    def c() -> bool:
        return False

    report = check(kernel)
    assert report["status"] == "not_ready"
    assert report["subsystems"]["a"]["metric"] == 0.75
    assert report["subsystems"]["b"]["metric"] == 1.0
    assert report["subsystems"]["c"]["metric"] == 0.0
    assert report["missing"] == ["c"]
    assert kernel.subsystems == ["a", "b", "c"]


def test_a_cache_hit_returns_the_same_response_objects() -> None:
    core = Kernel(health_ttl_ms=60_000)._core
    first = core.route("GET", "/health", NO_REQUEST)
    assert first is not None
    assert core.route("GET", "/health", NO_REQUEST) is first
    head = core.route("HEAD", "/health", NO_REQUEST)
    assert head is not None
    assert head[2] == b""
    assert head[:2] == first[:2]


def test_ping_is_a_native_check_that_always_passes() -> None:
    kernel = Kernel()
    kernel.add_ping()
    kernel.add_ping("ping2")
    report = check(kernel)
    assert report["status"] == "ready"
    assert report["subsystems"]["ping"]["metric"] == 1.0
    assert kernel.subsystems == ["ping", "ping2"]


def test_the_decorator_returns_the_function_unchanged() -> None:
    kernel = Kernel()

    def probe() -> float:
        return 1.0

    assert kernel.subsystem("p", threshold=0.1)(probe) is probe


def test_raising_and_wrongly_typed_checks_fail_with_a_short_reason() -> None:
    kernel = Kernel()

    @kernel.subsystem("raises", threshold=0.5)
    async def raises() -> float:
        raise ConnectionError("refused")

    @kernel.subsystem("text", threshold=0.5)
    def text() -> Any:
        return "fine"

    report = check(kernel)
    assert report["subsystems"]["raises"]["error"] == "ConnectionError: refused"
    assert report["subsystems"]["text"]["error"] == "check returned str, expected a float or a bool"


def test_registering_a_name_twice_is_refused() -> None:
    kernel = Kernel()
    kernel.subsystem("db", threshold=0.5)(lambda: 1.0)
    with pytest.raises(ValueError, match="already registered"):
        kernel.subsystem("db", threshold=0.5)(lambda: 1.0)


def test_bad_threshold_and_timeout_are_refused() -> None:
    kernel = Kernel()
    with pytest.raises(ValueError, match="threshold"):
        kernel.subsystem("x", threshold=float("nan"))(lambda: 1.0)
    with pytest.raises(ValueError, match="timeout_ms"):
        kernel.subsystem("y", threshold=0.5, timeout_ms=0)(lambda: 1.0)


def test_default_kernel_is_missing_everything_before_start(tmp_path: Path) -> None:
    kernel = default_kernel(tmp_path)

    async def run() -> dict[str, Any]:
        return await kernel.check()

    report = asyncio.run(run())
    assert report["missing"] == ["plastic_ltm", "triune_conscience", "world_model"]
    assert {d["error"] for d in report["subsystems"].values()} == {"initialising"}
    assert not (tmp_path / "plastic_ltm.redb").exists(), "nothing touches the disk before start"


def test_memory_stores_and_retrieves_records(tmp_path: Path) -> None:
    kernel = default_kernel(tmp_path)
    first = kernel.memory.store(b"\x00payload", {"kind": "episode"})
    second = kernel.memory.store(b"more")
    assert second > first
    assert kernel.memory.retrieve(first) == (b"\x00payload", {"kind": "episode"})
    assert kernel.memory.retrieve(second) == (b"more", {})
    assert len(kernel.memory) == 2
    assert kernel.memory.integrity() == 1.0
    with pytest.raises(KeyError):
        kernel.memory.retrieve(999)
    assert kernel.memory.path == tmp_path / "plastic_ltm.redb"


def test_conscience_uses_built_in_axioms_or_the_data_dir_file(tmp_path: Path) -> None:
    builtin = default_kernel(tmp_path / "a")
    assert builtin.conscience.source == "built-in"
    assert len(builtin.conscience.axioms()) >= 10
    assert builtin.conscience.alignment() == 1.0

    custom = tmp_path / "b"
    custom.mkdir()
    axioms = [{"id": f"rule_{i}", "statement": f"Rule {i}."} for i in range(9)]
    (custom / "axioms.json").write_text(json.dumps({"version": 1, "axioms": axioms}))
    kernel = default_kernel(custom)
    assert kernel.conscience.source == str(custom / "axioms.json")
    assert kernel.conscience.alignment() == pytest.approx(0.9)
    assert check(kernel)["missing"] == ["triune_conscience"], "0.9 is not above 0.90"


def test_world_model_holds_json_values(tmp_path: Path) -> None:
    kernel = default_kernel(tmp_path)
    world = kernel.world
    assert world.coherence() == 0.0
    world.update("goal", {"name": "explore", "priority": [1, 2.5, None, True]})
    assert world.get("goal") == {"name": "explore", "priority": [1, 2.5, None, True]}
    assert world.get("absent") is None
    assert world.keys() == ["goal"]
    assert world.coherence() == 1.0
    assert world.updated_at("goal") is not None
    assert world.remove("goal")
    assert len(world) == 0
    with pytest.raises(TypeError):
        world.update("bad", object())


def test_started_kernel_records_its_system_entry(tmp_path: Path) -> None:
    kernel = default_kernel(tmp_path)
    report = check(kernel)
    assert report["status"] == "ready", report
    assert kernel.world.get("system")["kernel"] == "phoenix"


def test_asgi_app_mounts_under_a_prefix_with_lifespan() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    kernel = Kernel()

    @kernel.subsystem("cache", threshold=0.5)
    async def cache() -> float:
        return 1.0

    app = Starlette(routes=[Mount("/probe", kernel.asgi())])
    with TestClient(app) as client:
        assert client.get("/probe/health").json()["status"] == "healthy"
        ready = client.get("/probe/ready")
        assert ready.status_code == 200
        assert ready.json()["subsystems"]["cache"]["ready"] is True
        head = client.head("/probe/ready")
        assert (head.status_code, head.content) == (200, b"")
        assert client.post("/probe/health").headers["allow"] == "GET, HEAD"
        assert client.get("/probe/missing").json()["error"] == "Not Found"


def test_a_served_worker_freezes_what_it_started_with() -> None:
    # In a subprocess: freezing is for the serving worker, and would leak into this test process.
    script = """
import asyncio, gc
from phoenix import Kernel

async def main() -> None:
    kernel = Kernel()
    before = gc.get_freeze_count()
    kernel.__rsgi_init__(asyncio.get_running_loop())
    print(before, gc.get_freeze_count())

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == 0
    # The modules and the kernel: thousands of objects, out of the cyclic GC's full collections.
    assert after > 1000


def test_exiting_while_a_check_runs_in_a_thread_neither_crashes_nor_cuts_it_off() -> None:
    # On Python < 3.14 a thread that wants the GIL back while the interpreter finalizes is ended
    # with pthread_exit, which aborts the process when it unwinds through Rust frames. Here the
    # sync check sleeps (GIL released) past its timeout while the script exits, and a finalizer
    # holds the interpreter in finalization past the check's wake-up: without the core's exit gate
    # this aborts every time (SIGABRT, status -6).
    script = """
import asyncio, gc, sys, time
from phoenix import Kernel

kernel = Kernel(ready_ttl_ms=0)

@kernel.subsystem("slow", threshold=0.5, timeout_ms=50)
def slow() -> float:
    time.sleep(0.4)
    print("check finished", flush=True)
    return 1.0

class SlowFinalizer:
    def __del__(self, sleep=time.sleep):
        sleep(0.8)

print(asyncio.run(kernel.check())["status"], flush=True)
# Garbage found only by the interpreter's last collection, after finalization has begun.
gc.set_threshold(1_000_000_000)
cycle = SlowFinalizer()
cycle.self = cycle
del cycle
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Exit waited for the check that was still running: its last line is there.
    assert done.stdout.split("\n") == ["not_ready", "check finished", ""]


def test_requests_waiting_on_two_event_loops_are_each_woken_on_their_own() -> None:
    """A kernel used from two threads, each with its own event loop: requests that wait for the same
    round are answered on their own loops (a future of one loop awaited on another would fail)."""
    kernel = Kernel()
    release = threading.Event()
    started = threading.Barrier(3)

    @kernel.subsystem("gate", threshold=0.5, timeout_ms=30_000)
    def gate() -> bool:
        return release.wait(30)

    core = kernel._core

    async def wait_for_ready() -> int:
        response = core.route("GET", "/ready", NO_REQUEST)
        started.wait(30)
        if response is None:
            await asyncio.shield(core.ready_round())
            response = core.route_latest("GET", "/ready", NO_REQUEST)
        return response[0]

    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(asyncio.run(wait_for_ready()))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    started.wait(30)  # both have asked and found the round in flight
    release.set()
    for thread in threads:
        thread.join(30)
    assert statuses == [200, 200]


@pytest.mark.parametrize("elapsed_s", [float("nan"), float("inf"), -1.0])
def test_a_request_log_time_that_is_not_a_duration_is_a_clear_error(elapsed_s: float) -> None:
    with pytest.raises(ValueError, match="elapsed_s must be a finite number of seconds"):
        Kernel()._core.record_request("GET", "/health", 200, elapsed_s)
