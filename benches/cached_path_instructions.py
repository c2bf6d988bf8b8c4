"""Instructions one cached ``GET /ready`` costs the calling thread, with dependency checks running every
10 ms in the background or idle (the same checks, every hour), counted by callgrind per thread.

Wall-clock micro-benchmarks of a ~400 ns call swing by 2x between identical runs on a shared machine; the
instructions the calling thread executes do not, so they tell whether checks running meanwhile add work to
the cached path (contention they may cause is not counted: valgrind runs one thread at a time).

    python benches/cached_path_instructions.py [--calls 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from phoenix import _core
from phoenix.config import DEFAULTS

HOUR_MS = 3_600_000
RUNNING_MS = 10


class Scope(NamedTuple):
    """What the core reads off a request, in the shape of Granian's RSGI scope."""

    query_string: str
    headers: dict[str, str]


def serve_calls(running: bool, calls: int) -> None:
    """Routes ``calls`` cached /ready requests on a core whose tcp, disk and memory checks run every
    RUNNING_MS (or every hour)."""
    core = _core.Core(
        HOUR_MS, HOUR_MS, DEFAULTS.check_timeout_ms, "always", None,
        DEFAULTS.live_stale_ms, DEFAULTS.ready_stale_ms, True,
    )  # fmt: skip
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)

    def accept_forever() -> None:
        while True:
            listener.accept()[0].close()

    threading.Thread(target=accept_forever, daemon=True).start()
    port = listener.getsockname()[1]
    settings = {
        "tcp": {"host": "127.0.0.1", "port": port},
        "disk": {"path": tempfile.gettempdir()},
        "memory": {},
    }
    for kind, keys in settings.items():
        interval = RUNNING_MS if running else HOUR_MS
        core.add_dependency(kind, kind, json.dumps(keys), threshold=0.0, interval_ms=interval)
    loop = asyncio.new_event_loop()
    core.start(loop)

    async def first_round() -> None:
        await core.check()

    loop.run_until_complete(first_round())
    time.sleep(0.5)
    scope = Scope("", {"accept": "*/*"})
    for _ in range(1000):
        core.route("GET", "/ready", scope)
    for _ in range(calls):
        core.route("GET", "/ready", scope)


def main_thread_instructions(running: bool, calls: int, out: Path) -> int:
    """The main thread's instructions in a process making ``calls`` calls (callgrind, per thread)."""
    stem = out / f"{'running' if running else 'idle'}-{calls}"
    argv = [sys.executable, __file__, "--child", "running" if running else "idle", "--calls", str(calls)]
    cg = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={stem}.%p"]
    subprocess.run([*cg, *argv], check=True, capture_output=True)
    (main,) = out.glob(f"{stem.name}.*-01")
    match = re.search(r"^summary: (\d+)", main.read_text(), re.MULTILINE)
    assert match, main
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--child", choices=["running", "idle"])
    args = parser.parse_args()
    if args.child:
        serve_calls(args.child == "running", args.calls)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for running in (True, False):
            base = main_thread_instructions(running, 0, out)
            total = main_thread_instructions(running, args.calls, out)
            label = f"checks every {RUNNING_MS} ms" if running else "checks idle"
            print(f"{label}: {(total - base) / args.calls:,.0f} instructions per cached /ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
