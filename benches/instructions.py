"""Instructions per request: Phoenix beside the bare Granian ceiling, counted by callgrind.

    python benches/instructions.py [--seconds 10] [--connections 10] [--out benches/results] \
        [--profiles DIR]

Wall-clock ratios from sequential runs on a shared two-core machine swing by ±10 % between runs of the same
code; the number of instructions a server executes per request barely moves (valgrind counts them, whatever
else the machine is doing; about ±2 % between runs, as requests batch differently per wake-up). Each
server runs under ``valgrind --tool=callgrind --trace-children=yes`` with the settings of
``benches/http_harness.py`` (server on core 0, wrk on core 1); after a warm-up the counters of its Granian
worker are zeroed, ``wrk`` loads one endpoint for ``--seconds``, and the worker's instructions (all its
threads, user space only) are divided by the requests wrk completed.

The kernel's network work per request, the same for every server, is not counted, so a wall-clock ratio
lies between the ratio shown here and 1. Compare ratios within one run. With ``--profiles DIR`` each
worker's callgrind profile is kept there, for ``callgrind_annotate --inclusive=yes``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from http_harness import (
    BENCHES,
    CEILING,
    PHOENIX_OFF,
    PHOENIX_ON,
    ServerSpec,
    ensure_apt,
    log,
    machine_section,
    prepare_load_run,
    run_env,
    running,
    save_report,
    server_specs,
    wrk,
)

WARMUP_S = 5
# Under valgrind a server starts tens of times slower.
START_TIMEOUT_S = 300.0
# /health only: a /ready request also carries its share of the check rounds (one per 100 ms TTL), which
# valgrind's slow-down spreads over some fifty times fewer requests than at full speed.
TARGETS = [(CEILING, "/health"), (PHOENIX_ON, "/health"), (PHOENIX_OFF, "/health")]


@dataclass
class Count:
    server: str
    endpoint: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, timeout=120, check=True)


def newest_dump(out: Path, pid: int) -> tuple[Path, int]:
    """``pid``'s newest dump (``callgrind_control -d`` writes ``cg.<pid>.<n>``) and its instruction total."""
    dumps = sorted(out.glob(f"cg.{pid}.*"), key=lambda p: int(p.suffix[1:]))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for process {pid} in {out}")
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return dumps[-1], int(line.split()[1])
    raise RuntimeError(f"no instruction total in {dumps[-1]}")


def count(spec: ServerSpec, endpoint: str, workdir: Path, args: argparse.Namespace) -> Count:
    out = workdir / "callgrind" / f"{len(list(workdir.glob('callgrind/*')))}"
    out.mkdir(parents=True)
    valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/cg.%p"]
    traced = ServerSpec(spec.name, [*valgrind, *spec.argv], [endpoint], spec.env, spec.cwd)
    with running(traced, workdir) as server:
        server.wait_ready(START_TIMEOUT_S)
        wrk(server.url(endpoint), args.connections, WARMUP_S, server)
        workers = server.workers()
        if len(workers) != 1:
            raise RuntimeError(f"{spec.name}: expected one Granian worker, found {workers}")
        (worker,) = workers
        callgrind_control("-z", worker)
        run = wrk(server.url(endpoint), args.connections, args.seconds, server)
        callgrind_control("-d", worker)
        # The dump is written by the traced process itself, asynchronously to callgrind_control.
        deadline = time.monotonic() + 60
        while True:
            try:
                dump, instructions = newest_dump(out, worker)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    found = Count(spec.name, endpoint, int(run["requests"]), instructions)
    if args.profiles:
        args.profiles.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{spec.name} {endpoint}").strip("-")
        shutil.copy(dump, args.profiles / f"{slug}.callgrind")
    log(f"{spec.name} {endpoint}: {found.per_request:,.0f} instructions per request")
    return found


def report(counts: list[Count], env: dict[str, str], args: argparse.Namespace) -> str:
    ceiling = next(c for c in counts if c.server == CEILING)
    lines = [
        f"# Phoenix instructions per request, {env['date']}",
        "",
        f"`{env['command']}`",
        "",
        f"callgrind (valgrind), the Granian worker's instructions in user space, all threads, over "
        f"{args.seconds} s of `wrk -t1 -c{args.connections}` after a {WARMUP_S} s warm-up; server on "
        "core 0, wrk on core 1. *Ceiling ÷ this* is the throughput this server would have relative to the "
        "ceiling if user-space instructions were all a request cost; the kernel's network work, the same "
        "for every server, puts the wall-clock ratio between this figure and 1.",
        "",
        "| server | endpoint | requests | instructions per request | ceiling ÷ this |",
        "|---|---|---:|---:|---:|",
    ]
    for c in counts:
        lines.append(
            f"| {c.server} | {c.endpoint} | {c.requests:,} | {c.per_request:,.0f} "
            f"| {ceiling.per_request / c.per_request:.3f} |"
        )
    lines += machine_section(env)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10, help="measured load per target (default 10)")
    parser.add_argument("--connections", type=int, default=10, help="wrk connections (default 10)")
    parser.add_argument("--out", type=Path, default=BENCHES / "results", help="report directory")
    parser.add_argument(
        "--profiles", type=Path, help="keep each worker's callgrind profile in this directory"
    )
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.connections < 1:
        parser.error("--seconds and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_load_run(args.connections)
    ensure_apt("callgrind_control", "valgrind")
    started = dt.datetime.now()
    env = run_env(started)
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-instructions-") as tmp:
        specs = {spec.name: spec for spec in server_specs(Path(tmp), with_fastapi=False)}
        counts = [count(specs[name], endpoint, Path(tmp), args) for name, endpoint in TARGETS]
    stem = args.out / f"instructions-{started.strftime('%Y-%m-%d-%H%M%S')}"
    raw = {
        "machine": env,
        "args": vars(args) | {"out": str(args.out), "profiles": args.profiles and str(args.profiles)},
        "counts": [asdict(c) | {"per_request": c.per_request} for c in counts],
    }
    save_report(stem, report(counts, env, args), raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
