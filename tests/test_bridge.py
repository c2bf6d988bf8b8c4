"""The core's threads never wait for the GIL: native work completes while Python is busy.

The event loop's thread is made to hold the GIL for seconds: a CPU-bound loop with the interpreter's
switch interval raised far above its length, so no other thread gets the GIL before it ends (a
``time.sleep`` would release it). Whatever the core finishes meanwhile was finished without Python.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from phoenix import default_kernel
from phoenix.app import _ASGIRequest

HEALTH_JSON = _ASGIRequest("format=health+json", {})
HOLD_S = 2.0


@pytest.fixture
def gil_held_by_whoever_has_it() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60 * HOLD_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def hold_the_gil(seconds: float) -> tuple[float, float]:
    """Busy for ``seconds`` without releasing the GIL; the wall-clock times it began and ended."""
    began = time.time()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass
    return began, time.time()


def recorded_at(check: dict[str, str]) -> float:
    return datetime.fromisoformat(check["time"].replace("Z", "+00:00")).timestamp()


@pytest.mark.usefixtures("gil_held_by_whoever_has_it")
def test_a_round_of_native_checks_completes_and_is_cached_while_the_loop_holds_the_gil(
    tmp_path: Path,
) -> None:
    kernel = default_kernel(tmp_path, check_timeout_ms=200, ready_ttl_ms=600_000)
    core = kernel._core

    async def scenario() -> tuple[float, float, dict[str, object]]:
        kernel.start()
        await kernel.wait_initialised()
        # Cold: the round starts (plastic_ltm's integrity runs on a blocking thread) and this request
        # would wait for it.
        assert core.route("GET", "/ready", HEALTH_JSON) is None
        began, ended = hold_the_gil(HOLD_S)
        # Answered from the cache at once: the round ended, and was cached, while the GIL was held.
        response = core.route("GET", "/ready", HEALTH_JSON)
        assert response is not None, "the round did not complete while the loop held the GIL"
        status, _headers, body = response
        assert status == 200, body
        return began, ended, json.loads(body)

    began, ended, report = asyncio.run(scenario())
    checks: dict[str, list[dict[str, str]]] = report["checks"]  # type: ignore[assignment]
    times = [recorded_at(check) for entries in checks.values() for check in entries]
    assert len(times) == 3
    # Every result was recorded before the hold ended: nothing waited for the GIL.
    assert all(at <= ended for at in times), (began, times, ended)
