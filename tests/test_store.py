"""End to end: the default kernel's store held by another process, then released."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phoenix import StoreUnavailable, default_kernel

from .conftest import phoenix_env, wait_until

# Bounds the waits only: recovery takes a check period plus the retry backoff (a few seconds).
DEADLINE_S = 30.0

HOLD_STORE = """
import sys
import phoenix

kernel = phoenix.default_kernel(sys.argv[1])
len(kernel.memory)  # opens the store, which this process now holds
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the store in ``tmp_path / "data"`` (the ``serve`` fixture's data dir)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE, str(tmp_path / "data")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=phoenix_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "holding\n"
    yield proc
    proc.kill()
    proc.wait()


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(DEADLINE_S) == 0


def test_a_served_kernel_recovers_once_the_store_is_released(
    serve: Any, holder: subprocess.Popen[str]
) -> None:
    server = serve()

    def held() -> dict[str, Any] | None:
        response = server.request("/ready")
        body: dict[str, Any] = response.json()
        others_ready = body.get("ready") == ["triune_conscience", "world_model"]
        return body if response.status == 503 and others_ready else None

    body = wait_until(held, what="plastic_ltm alone failing")
    assert body["missing"] == ["plastic_ltm"]
    error = body["subsystems"]["plastic_ltm"]["error"]
    assert "the store is already open" in error, error
    assert server.request("/startup").json() == {"status": "starting"}
    assert server.request("/startup").status == 503

    release(holder)
    wait_until(lambda: server.request("/ready").status == 200 or None, what="/ready 200 after the release")
    startup = server.request("/startup")
    assert (startup.status, startup.json()) == (200, {"status": "started"})
    assert server.proc.poll() is None, "recovered without a restart"


def test_memory_calls_fail_clearly_while_the_store_is_held_then_work(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    kernel = default_kernel(tmp_path / "data")
    with pytest.raises(StoreUnavailable, match=r"plastic_ltm unavailable: .*already open"):
        kernel.memory.store(b"x")

    release(holder)

    def stored() -> int | None:
        try:
            return kernel.memory.store(b"x")
        except StoreUnavailable:
            return None

    record = wait_until(stored, what="a store after the release")
    assert kernel.memory.retrieve(record) == (b"x", {})
