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


STORE_UNTIL_KILLED = """
import sys
import phoenix

memory = phoenix.default_kernel(sys.argv[1]).memory
for i in range(1_000_000):
    record = memory.store(f"record {i}".encode(), {"i": str(i)})
    print(record, i, flush=True)  # acknowledged: store() has returned
"""


def test_records_acknowledged_before_a_kill_9_survive_it(tmp_path: Path) -> None:
    """What the OOM killer does mid-write: every record whose ``store`` returned is there, intact,
    when the store is reopened, and the store still takes new records."""
    data = tmp_path / "data"
    writer = subprocess.Popen(
        [sys.executable, "-c", STORE_UNTIL_KILLED, str(data)],
        stdout=subprocess.PIPE,
        text=True,
        env=phoenix_env(),
    )
    assert writer.stdout is not None
    acknowledged: dict[int, int] = {}
    for line in writer.stdout:
        record, i = map(int, line.split())
        acknowledged[record] = i
        if len(acknowledged) == 200:
            break
    writer.kill()
    writer.wait(DEADLINE_S)
    # Lines printed between the last read and the kill are acknowledged too.
    for line in writer.stdout:
        record, i = map(int, line.split())
        acknowledged[record] = i

    memory = default_kernel(data).memory
    assert memory.integrity() == 1.0
    for record, i in acknowledged.items():
        assert memory.retrieve(record) == (f"record {i}".encode(), {"i": str(i)})
    assert len(memory) >= len(acknowledged)
    assert memory.store(b"after") not in acknowledged
