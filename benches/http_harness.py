"""HTTP benchmark: Phoenix /health and /ready against a bare Granian ceiling and FastAPI + uvicorn.

    python benches/http_harness.py [--duration 5] [--rounds 3] [--connections 1,50,500] \
        [--h2h-rounds 5] [--out benches/results]

All servers run pinned to core 0 and wrk to core 1 (``taskset``), with the same settings for each: per
connection count a 2 s warm-up per target, then ``--rounds`` runs of ``--duration`` seconds of
``wrk -t1 -cC --latency``, taken in turns across the targets; the median round is reported. Each server's
RSS is read before and after every load. Then ``--h2h-rounds`` head-to-head rounds: each challenger (a
second ceiling, Phoenix, FastAPI) loaded at the same time as the ceiling, the two servers sharing core 0,
so that the shared machine's drift, larger than the differences judged, slows both alike (see
``head_to_head``). The markdown report (with the machine description and the issue's targets evaluated), a
PNG chart of req/s and p99 (matplotlib) and the raw JSON go to ``--out``. Compare ratios within one run,
not numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
LUA = BENCHES / "wrk_report.lua"
HOST = "127.0.0.1"
SERVER_CPU = "0"
WRK_CPU = "1"
WARMUP_S = 2
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
QUIET_PCT = 15.0  # the machine counts as quiet below this much busy CPU, in % of one core
QUIET_TIMEOUT_S = 60.0
CEILING = "ceiling (granian rsgi)"
# A second, identical ceiling: head to head against the first it shows the method's own error.
CEILING_TWIN = "ceiling, second instance"
PHOENIX_ON = "phoenix (request log on)"
PHOENIX_OFF = "phoenix (request log off)"
FASTAPI_ON = "fastapi+uvicorn (access log on)"
FASTAPI_OFF = "fastapi+uvicorn (access log off)"
FASTAPI_PACKAGES = ["fastapi", "uvicorn", "httptools"]
CHART_PACKAGES = ["matplotlib"]
# Open files wanted for the harness and the servers and wrk it starts (they inherit the limit): at
# c = 500 a server holds 500 sockets and wrk another 500, near the soft limit of 1024 that many shells set.
NOFILE_WANTED = 65536
# The targets (section "Targets"): Phoenix /health against the ceiling and FastAPI + uvicorn.
TARGET_CEILING_RATIO = 0.95
TARGET_FASTAPI_RATIO = 9.0
TARGET_P99_CONNECTIONS = 50
TARGET_P99_RATIO = 1.1
TARGET_READY_RATIO = 0.9
TARGET_SOAK_GROWTH_MB = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench-http] {message}", file=sys.stderr, flush=True)


def run_text(argv: list[str], timeout: float = 30.0) -> str:
    """stdout (else stderr) of a short command, stripped; "" if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


# --- tools -----------------------------------------------------------------------------------------


def ensure_apt(command: str, package: str) -> None:
    """``command`` on PATH, installing Debian's ``package`` for it if missing."""
    if shutil.which(command):
        return
    if os.geteuid() != 0:
        sys.exit(f"{command} is missing; install it (apt-get install -y {package}) or run as root")
    log(f"{command} is missing: apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=600, check=True)
    if not shutil.which(command):
        sys.exit(f"apt-get install {package} did not provide {command}")


def ensure_packages(packages: list[str], purpose: str) -> bool:
    """The packages importable, installing them into the running venv if missing."""
    if all(importlib.util.find_spec(name) for name in packages):
        return True
    if sys.prefix == sys.base_prefix:
        log(f"{'/'.join(packages)} missing and not in a venv: skipping {purpose}")
        return False
    log(f"installing {' '.join(packages)} into {sys.prefix}")
    argv = [sys.executable, "-m", "pip", "install", "-q", *packages]
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=600, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"pip install failed ({exc}): skipping {purpose}")
        return False
    importlib.invalidate_caches()
    return all(importlib.util.find_spec(name) for name in packages)


def ensure_fastapi() -> bool:
    return ensure_packages(FASTAPI_PACKAGES, "the FastAPI comparison")


def ensure_matplotlib() -> bool:
    return ensure_packages(CHART_PACKAGES, "the PNG chart")


def raise_nofile(connections: int) -> str:
    """Raises the soft limit on open files, which the servers and wrk inherit, towards NOFILE_WANTED
    (never above the hard limit); warns if it stays too low for ``connections``. Returns "soft/hard"."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log(f"raised the open-files soft limit from {soft} to {wanted}")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A server's and wrk's sockets, plus room for the interpreter, logs and the event loop.
    needed = connections + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        log(f"open-files limit {soft} is below the {needed} needed for c={connections}: expect socket errors")

    def show(limit: int) -> str:
        return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)

    return f"{show(soft)}/{show(hard)}"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine() -> dict[str, str]:
    cpu_model = "-"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "-"
    if run_text(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    return {
        "uname": run_text(["uname", "-a"]),
        "nproc": run_text(["nproc"]),
        "cpu_model": cpu_model,
        "python": sys.version.split()[0],
        "granian": version("granian"),
        "uvloop": version("uvloop"),
        "fastapi": version("fastapi"),
        "uvicorn": version("uvicorn"),
        "wrk": run_text(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "-",
        "commit": commit,
        "loadavg_before": Path("/proc/loadavg").read_text().strip(),
    }


def run_env(started: dt.datetime, **extra: str) -> dict[str, str]:
    """What every report records of its run: the date, the command line, the machine, and ``extra``."""
    return {
        "date": started.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **machine(),
        **extra,
    }


def machine_section(env: dict[str, str]) -> list[str]:
    """The report's closing "Machine" section, from ``run_env``."""
    return [
        "",
        "## Machine",
        "",
        *(f"- {key}: `{value}`" for key, value in env.items() if key not in ("date", "command")),
    ]


def save_report(stem: Path, markdown: str, raw: dict[str, Any]) -> None:
    """Prints the report and writes it to ``stem``.md, its raw data to ``stem``.json."""
    print(markdown)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    log(f"wrote {stem}.md and {stem}.json")


# --- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may contain spaces; fields after the closing parenthesis are fixed.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return sorted(children)


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (all their threads)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine, all cores (from /proc/stat; idle and iowait excluded)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet() -> float:
    """Waits, at most QUIET_TIMEOUT_S, until the shared machine is idle between rounds (our servers are idle
    then, so any load is someone else's). Returns the busy % of the last 0.5 s sample."""
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    while True:
        busy, started = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        busy_pct = 100 * (machine_busy_seconds() - busy) / (time.monotonic() - started)
        if busy_pct < QUIET_PCT or time.monotonic() > deadline:
            if busy_pct >= QUIET_PCT:
                log(f"machine still busy ({busy_pct:.0f}% of a core) after {QUIET_TIMEOUT_S:.0f} s; going on")
            return busy_pct


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children: around a wrk run, wrk's own CPU time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ServerSpec:
    name: str
    argv: list[str]  # "{port}" is replaced by the port the server is given
    endpoints: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class Server:
    """One server subprocess, pinned to SERVER_CPU, in its own process group."""

    def __init__(self, spec: ServerSpec, workdir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.argv = [arg.replace("{port}", str(self.port)) for arg in spec.argv]
        self.log_path = workdir / (re.sub(r"[^a-z0-9]+", "-", spec.name).strip("-") + ".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
        env.update(spec.env)
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, *self.argv],
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def url(self, endpoint: str) -> str:
        return f"http://{HOST}:{self.port}{endpoint}"

    def workers(self) -> list[int]:
        """Granian's worker processes (children of the main process); uvicorn's single process."""
        return child_pids(self.proc.pid) or [self.proc.pid]

    def all_pids(self) -> list[int]:
        return [self.proc.pid, *child_pids(self.proc.pid)]

    def rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in self.workers())

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.spec.name} exited ({self.proc.returncode}):\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, int]:
        """Polls the port, then each endpoint until it answers 200; returns each endpoint's body size."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.spec.name}: port {self.port} not open") from None
                time.sleep(0.05)
        sizes = {}
        for endpoint in self.spec.endpoints:
            while True:
                self.check_alive()
                status, body = http_get(self.port, endpoint)
                if status == 200:
                    sizes[endpoint] = len(body)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.spec.name}: {endpoint} answered {status}, not 200")
                time.sleep(0.05)
        return sizes

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL if it has not gone within STOP_TIMEOUT_S."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                log(f"{self.spec.name} ignored {sig.name}")
        # Workers left behind by a main process that died first.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(spec: ServerSpec, workdir: Path) -> Iterator[Server]:
    server = Server(spec, workdir)
    try:
        yield server
    finally:
        server.stop()


def http_get(port: int, endpoint: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", endpoint)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


# --- wrk -------------------------------------------------------------------------------------------


def wrk(url: str, connections: int, seconds: int, server: Server) -> dict[str, Any]:
    """One wrk run; wrk_report.lua's summary plus req/s and the CPU used by the server and by wrk."""
    argv = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    argv += ["-s", str(LUA), url]
    pids = server.all_pids()
    rss_before = server.rss_kb()
    server_cpu, wrk_cpu, busy = cpu_seconds(pids), children_cpu_seconds(), machine_busy_seconds()
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    wall = time.monotonic() - started
    server_cpu, wrk_cpu = cpu_seconds(pids) - server_cpu, children_cpu_seconds() - wrk_cpu
    busy = machine_busy_seconds() - busy
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("WRK_JSON "))
    report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
    report["rss_kb_before"], report["rss_kb_after"] = rss_before, server.rss_kb()
    report["server_cpu_pct"] = 100 * server_cpu / wall
    report["wrk_cpu_pct"] = 100 * wrk_cpu / wall
    # Whatever else ran meanwhile (other processes, kernel work, steal), in % of one core.
    report["other_cpu_pct"] = max(0.0, 100 * (busy - server_cpu - wrk_cpu) / wall)
    return report


@dataclass
class Result:
    server: str
    endpoint: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_pct: float
    wrk_cpu_pct: float
    other_cpu_pct: float
    errors: int
    error_kinds: dict[str, int]  # connect, read, write, status (non-2xx/3xx), timeout: summed over rounds
    rss_kb_max: int  # the largest server RSS read around this point's runs
    rounds: list[dict[str, Any]]


def summarize(server: str, endpoint: str, connections: int, rounds: list[dict[str, Any]]) -> Result:
    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    result = Result(
        server=server,
        endpoint=endpoint,
        connections=connections,
        rps=median("rps"),
        p50_ms=statistics.median(r["latency_us"]["p50"] for r in rounds) / 1000,
        p99_ms=statistics.median(r["latency_us"]["p99"] for r in rounds) / 1000,
        server_cpu_pct=median("server_cpu_pct"),
        wrk_cpu_pct=median("wrk_cpu_pct"),
        other_cpu_pct=median("other_cpu_pct"),
        errors=sum(sum(r["errors"].values()) for r in rounds),
        error_kinds={kind: sum(r["errors"][kind] for r in rounds) for kind in rounds[0]["errors"]},
        rss_kb_max=max(max(r["rss_kb_before"], r["rss_kb_after"]) for r in rounds),
        rounds=rounds,
    )
    log(
        f"{server} {endpoint} c={connections}: {result.rps:,.0f} req/s, "
        f"p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms"
        + (f", errors {result.error_kinds}" if result.errors else "")
    )
    return result


def requests_per_cpu_second(run: dict[str, Any]) -> float:
    cpu_s = run["server_cpu_pct"] / 100 * run["duration_us"] / 1e6
    return float(run["requests"] / cpu_s) if cpu_s else 0.0


@dataclass
class HeadToHead:
    """Rounds in which ``server`` (at ``endpoint``) and the ceiling (at /health) were loaded at once,
    sharing the server core: each round holds both wrk runs, ``challenger`` and ``ceiling``."""

    server: str
    endpoint: str
    connections: int
    rounds: list[dict[str, Any]]

    @property
    def ratios(self) -> list[float]:
        """Per round, the challenger's req/s over the ceiling's."""
        return [r["challenger"]["rps"] / r["ceiling"]["rps"] for r in self.rounds]

    @property
    def cpu_ratios(self) -> list[float]:
        """Per round, the same from requests per CPU-second of each server."""
        return [
            requests_per_cpu_second(r["challenger"]) / requests_per_cpu_second(r["ceiling"])
            for r in self.rounds
        ]

    @property
    def ratio(self) -> float:
        return float(statistics.median(self.ratios))

    @property
    def cpu_ratio(self) -> float:
        return float(statistics.median(self.cpu_ratios))


def load_together(loads: list[tuple[Server, str]], connections: int, seconds: int) -> list[dict[str, Any]]:
    """One wrk per (server, endpoint), all started together (every wrk on WRK_CPU, every server on
    SERVER_CPU). Their wrk and other-CPU columns are shared and mean nothing here."""
    with ThreadPoolExecutor(len(loads)) as pool:
        runs = [
            pool.submit(wrk, server.url(endpoint), connections, seconds, server) for server, endpoint in loads
        ]
        return [run.result() for run in runs]


# --- servers ---------------------------------------------------------------------------------------


def server_specs(workdir: Path, with_fastapi: bool) -> list[ServerSpec]:
    from phoenix.config import DEFAULTS  # the log level Phoenix ships with, for the ceiling too

    log_level = DEFAULTS.log_level
    python = sys.executable
    phoenix = [str(Path(python).parent / "phoenix"), "serve"]
    ceiling = [python, str(BENCHES / "ceiling_app.py"), "--log-level", log_level, "--port", "{port}"]
    specs = [ServerSpec(name, ceiling, ["/health"], cwd=BENCHES) for name in (CEILING, CEILING_TWIN)]
    for log_on in (True, False):
        specs.append(
            ServerSpec(
                f"phoenix (request log {'on' if log_on else 'off'})",
                [*phoenix, "--data-dir", str(workdir / f"data-{log_on}"), "--port", "{port}"],
                ["/health", "/ready"],
                env={"PHOENIX_REQUEST_LOG": "true" if log_on else "false"},
                cwd=workdir,
            )
        )
    if with_fastapi:
        uvicorn = [python, "-m", "uvicorn", "--app-dir", str(BENCHES), "fastapi_app:app"]
        uvicorn += ["--host", HOST, "--port", "{port}", "--log-level", log_level]
        specs.append(ServerSpec("fastapi+uvicorn (access log on)", uvicorn, ["/health"]))
        specs.append(
            ServerSpec("fastapi+uvicorn (access log off)", [*uvicorn, "--no-access-log"], ["/health"])
        )
    return specs


def bench(
    specs: list[ServerSpec], workdir: Path, args: argparse.Namespace
) -> tuple[list[Result], list[HeadToHead], dict[str, Any]]:
    """Starts every server (idle ones cost core 0 nothing), then measures them in turns: per connection
    count, each target's warm-up, then round 1 of every target, round 2 of every target, ... so that a
    disturbance on the shared machine spreads over all targets instead of falling on one. Then the
    head-to-head rounds (see `head_to_head`)."""
    with contextlib.ExitStack() as stack:
        servers = []
        info: dict[str, Any] = {}
        for spec in specs:
            log(f"starting {spec.name}")
            server = stack.enter_context(running(spec, workdir))
            # Ready (its port bound) before the next server picks a free port.
            info[spec.name] = {"argv": server.argv, "env": spec.env, "body_bytes": server.wait_ready()}
            servers.append(server)
        for server in servers:
            info[server.spec.name]["rss_kb_before"] = server.rss_kb()
            info[server.spec.name]["rss_kb_after_connections"] = {}
        targets = [(server, endpoint) for server in servers for endpoint in server.spec.endpoints]
        results = []
        duels: list[HeadToHead] = []
        for connections in args.connections:
            rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for server, endpoint in targets:
                wrk(server.url(endpoint), connections, WARMUP_S, server)
                rounds[server.spec.name, endpoint] = []
            for n in range(args.rounds):
                log(f"c={connections}: round {n + 1} of {args.rounds}")
                shift = n % len(targets)  # rotate the order, so no target always follows the same one
                for server, endpoint in targets[shift:] + targets[:shift]:
                    idle_busy_pct = wait_quiet()
                    run = wrk(server.url(endpoint), connections, args.duration, server)
                    run["busy_pct_before"] = idle_busy_pct
                    rounds[server.spec.name, endpoint].append(run)
            for (name, endpoint), runs in rounds.items():
                results.append(summarize(name, endpoint, connections, runs))
            duels += head_to_head(servers, connections, args)
            for server in servers:
                info[server.spec.name]["rss_kb_after_connections"][str(connections)] = server.rss_kb()
        for server in servers:
            info[server.spec.name]["rss_kb_after"] = server.rss_kb()
            info[server.spec.name]["worker_pids"] = server.workers()
        return results, duels, info


# Loaded head to head with the ceiling's /health; the ceiling's twin first, for the method's own error.
# FastAPI too, so that Phoenix ÷ FastAPI is a ratio of two head-to-head ratios.
CHALLENGERS = [
    (CEILING_TWIN, "/health"),
    (PHOENIX_ON, "/health"),
    (PHOENIX_ON, "/ready"),
    (PHOENIX_OFF, "/health"),
    (PHOENIX_OFF, "/ready"),
    (FASTAPI_ON, "/health"),
    (FASTAPI_OFF, "/health"),
]


def head_to_head(servers: list[Server], connections: int, args: argparse.Namespace) -> list[HeadToHead]:
    """Each challenger and the ceiling loaded at the same time, sharing the server core, for
    ``--h2h-rounds`` rounds (challengers in turns, rotated per round). Whatever slows the shared machine
    down during a round slows both alike, so the ratio of their req/s holds still where sequential
    rounds swing by ±10 %: with both CPU-bound, it is the ratio of their costs per request."""
    if args.h2h_rounds == 0:
        return []
    by_name = {server.spec.name: server for server in servers}
    ceiling = by_name[CEILING]
    present = [(name, endpoint) for name, endpoint in CHALLENGERS if name in by_name]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {pair: [] for pair in present}
    for n in range(args.h2h_rounds):
        log(f"c={connections}: head to head, round {n + 1} of {args.h2h_rounds}")
        shift = n % len(present)
        for name, endpoint in present[shift:] + present[:shift]:
            wait_quiet()
            challenger, against = load_together(
                [(by_name[name], endpoint), (ceiling, "/health")], connections, args.duration
            )
            runs[name, endpoint].append({"challenger": challenger, "ceiling": against})
    duels = []
    for (name, endpoint), pairs in runs.items():
        duel = HeadToHead(server=name, endpoint=endpoint, connections=connections, rounds=pairs)
        log(
            f"{name} {endpoint} c={connections} head to head: {duel.ratio:.3f}x the ceiling "
            f"(rounds {min(duel.ratios):.3f}-{max(duel.ratios):.3f})"
        )
        duels.append(duel)
    return duels


# --- report ----------------------------------------------------------------------------------------


# Chart colours: the ceiling grey, Phoenix blues (log on) and greens (log off), FastAPI oranges.
COLOURS = {
    (CEILING, "/health"): "#7f7f7f",
    (CEILING_TWIN, "/health"): "#b5b5b5",
    (PHOENIX_ON, "/health"): "#1f4e9c",
    (PHOENIX_ON, "/ready"): "#6f9fe0",
    (PHOENIX_OFF, "/health"): "#1b7a3a",
    (PHOENIX_OFF, "/ready"): "#7cc48f",
    (FASTAPI_ON, "/health"): "#d9661f",
    (FASTAPI_OFF, "/health"): "#f2b27c",
}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "**MISS**")


@dataclass
class TargetCheck:
    target: str
    connections: int | None
    shipped: str  # Phoenix with its request log on, FastAPI + uvicorn with its access log on
    shipped_ok: bool | None
    log_off: str  # both logs off
    log_off_ok: bool | None


def latest_soak(out: Path) -> dict[str, Any] | None:
    """The newest soak report (benches/soak.py) in ``out``, if any."""
    for path in sorted(out.glob("soak-*.json"), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            found: dict[str, Any] = json.loads(path.read_text())
            found["path"] = path.with_suffix(".md").name
            return found
    return None


def evaluate_targets(
    results: list[Result], duels: list[HeadToHead], args: argparse.Namespace
) -> list[TargetCheck]:
    """The issue's targets, from this run's medians; the soak target from the newest soak report. The
    throughput ratios against the ceiling come from the head-to-head rounds when there are any: in
    sequential rounds the machine's own drift is as large as the differences being judged."""
    by_key = {(r.server, r.endpoint, r.connections): r for r in results}
    duel_of = {(d.server, d.endpoint, d.connections): d for d in duels}

    def check(
        a: tuple[str, str, int], b: tuple[str, str, int], attr: str, bound: float, at_least: bool
    ) -> tuple[str, bool | None]:
        ra, rb = by_key.get(a), by_key.get(b)
        if ra is None or rb is None or not getattr(rb, attr):
            return "-", None
        va, vb = getattr(ra, attr), getattr(rb, attr)
        value = va / vb
        shown = f"{va:,.0f} ÷ {vb:,.0f} req/s" if attr == "rps" else f"{va:.3f} ÷ {vb:.3f} ms"
        return f"{value:.2f}x ({shown})", value >= bound if at_least else value <= bound

    def duel_check(
        key: tuple[str, str, int], per: tuple[str, str, int] | None, bound: float
    ) -> tuple[str, bool | None]:
        """``key``'s head-to-head ratio to the ceiling, divided by ``per``'s if given, against ``bound``."""
        duel, base = duel_of.get(key), duel_of.get(per) if per else None
        if duel is None or (per and base is None):
            return "-", None
        if base is None:
            twin = duel_of.get((CEILING_TWIN, "/health", key[2]))
            twin_text = f"; twin ceiling {twin.ratio:.3f}x" if twin else ""
            shown = f"rounds {min(duel.ratios):.3f}-{max(duel.ratios):.3f}{twin_text}"
            return f"{duel.ratio:.3f}x head to head ({shown})", duel.ratio >= bound
        value = duel.ratio / base.ratio
        shown = f"{duel.ratio:.3f} ÷ {base.ratio:.3f} of the ceiling"
        return f"{value:.2f}x head to head ({shown})", value >= bound

    def throughput_check(
        a: tuple[str, str, int], b: tuple[str, str, int], bound: float
    ) -> tuple[str, bool | None]:
        """``a``'s req/s over ``b``'s: head to head when both were loaded against the ceiling (or ``b`` is
        the ceiling), else from the sequential medians."""
        per = None if b[0] == CEILING else b
        if a in duel_of and (per is None or per in duel_of):
            return duel_check(a, per, bound)
        return check(a, b, "rps", bound, True)

    checks = []

    def add_throughput(
        target: str, bound: float, on: tuple[tuple[str, str], ...], off: tuple[tuple[str, str], ...]
    ) -> None:
        """One row per connection count: ``on`` and ``off`` are (server, endpoint) pairs, a over b."""
        (a_on, b_on), (a_off, b_off) = on, off
        for c in args.connections:
            shipped = throughput_check((*a_on, c), (*b_on, c), bound)
            log_off = throughput_check((*a_off, c), (*b_off, c), bound)
            checks.append(TargetCheck(target, c, *shipped, *log_off))

    add_throughput(
        f"/health ≥ {TARGET_CEILING_RATIO}x the ceiling (req/s)",
        TARGET_CEILING_RATIO,
        ((PHOENIX_ON, "/health"), (CEILING, "/health")),
        ((PHOENIX_OFF, "/health"), (CEILING, "/health")),
    )
    add_throughput(
        f"/health ≥ {TARGET_FASTAPI_RATIO:g}x FastAPI + uvicorn (req/s)",
        TARGET_FASTAPI_RATIO,
        ((PHOENIX_ON, "/health"), (FASTAPI_ON, "/health")),
        ((PHOENIX_OFF, "/health"), (FASTAPI_OFF, "/health")),
    )
    c = TARGET_P99_CONNECTIONS
    checks.append(
        TargetCheck(
            f"/health p99 at c = {c} ≤ {TARGET_P99_RATIO}x the ceiling's p99",
            c,
            *check((PHOENIX_ON, "/health", c), (CEILING, "/health", c), "p99_ms", TARGET_P99_RATIO, False),
            *check((PHOENIX_OFF, "/health", c), (CEILING, "/health", c), "p99_ms", TARGET_P99_RATIO, False),
        )
    )
    add_throughput(
        f"/ready (cached) ≥ {TARGET_READY_RATIO}x /health (req/s)",
        TARGET_READY_RATIO,
        ((PHOENIX_ON, "/ready"), (PHOENIX_ON, "/health")),
        ((PHOENIX_OFF, "/ready"), (PHOENIX_OFF, "/health")),
    )
    soak = latest_soak(args.out)
    target = f"RSS growth over 5 minutes ≤ {TARGET_SOAK_GROWTH_MB:g} MB"
    if soak is None or "rss" not in soak:
        checks.append(
            TargetCheck(target, 50, "not measured: run `make bench-soak MINUTES=5`", None, "-", None)
        )
    else:
        growth = soak["rss"]["growth_mb"]
        minutes = soak["args"]["minutes"]
        shipped = (
            f"{growth:+.2f} MB over {minutes:g} min, from [{soak['path']}]({soak['path']}) "
            f"({soak['machine']['date']}, request log {soak['request_log']})"
        )
        ok = growth <= TARGET_SOAK_GROWTH_MB if minutes >= 5 else None
        checks.append(TargetCheck(target, 50, shipped, ok, "-", None))
    return checks


def report(
    results: list[Result],
    duels: list[HeadToHead],
    servers: dict[str, Any],
    env: dict[str, str],
    args: argparse.Namespace,
    chart_name: str | None,
) -> str:
    by_key = {(r.server, r.endpoint, r.connections): r for r in results}

    def rps(server: str, endpoint: str, connections: int) -> float | None:
        found = by_key.get((server, endpoint, connections))
        return found.rps if found else None

    lines = [
        f"# Phoenix HTTP benchmark, {env['date']}",
        "",
        f"`{env['command']}`",
        "",
        f"Server on core {SERVER_CPU}, `wrk -t1` on core {WRK_CPU}; per connection count a {WARMUP_S} s "
        f"warm-up, then the median of {args.rounds} rounds of {args.duration} s, taken in turns across the "
        "servers. "
        "Ratios compare servers within this run. CPU columns are % of one core during the rounds: the "
        "server's processes, wrk, and everything else on the machine (other CPU % well above 0 means the "
        f"numbers are disturbed; each round waits, up to {QUIET_TIMEOUT_S:.0f} s, for the machine to be "
        "idle first; at c = 500 about 20-30 % shows for every Granian server alike: the kernel's loopback "
        "network work (softirq) charged to no process, not a disturbance). Errors are wrk's socket errors "
        "(connect, read, write, timeout) and non-2xx/3xx answers, summed over the rounds.",
        "",
        "| server | endpoint | connections | req/s | p50 ms | p99 ms | ratio to ceiling | server CPU % "
        "| wrk CPU % | other CPU % | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.endpoint} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} "
            f"| {ratio(r.rps, rps(CEILING, '/health', r.connections))} | {r.server_cpu_pct:.0f} "
            f"| {r.wrk_cpu_pct:.0f} | {r.other_cpu_pct:.0f} | {r.errors} |"
        )
    if chart_name:
        lines += ["", f"![req/s and p99 per server and connection count]({chart_name})"]

    if duels:
        lines += ["", "## Head to head with the ceiling", ""]
        lines += [
            "Each server below and the ceiling loaded at the same time, both servers sharing core "
            f"{SERVER_CPU} and both wrk on core {WRK_CPU}, {args.h2h_rounds} rounds of {args.duration} s "
            "per connection count, in turns. Whatever slows the shared machine during a round slows both "
            "alike, so their ratio holds still where the sequential rounds above swing by ±10 %; with both "
            "servers CPU-bound, each gets half the core and the req/s ratio is the ratio of their costs per "
            "request. The ceiling's twin (a second, identical ceiling) shows the method's own error. "
            "Per CPU-second: the same ratio from requests per second of each server's own CPU time.",
            "",
            "| server | endpoint | connections | ÷ ceiling (median) | rounds (min-max) | per CPU-second "
            "| req/s | ceiling req/s |",
            "|---|---|---:|---:|---|---:|---:|---:|",
        ]
        for d in duels:
            rps_each = statistics.median(r["challenger"]["rps"] for r in d.rounds)
            ceiling_each = statistics.median(r["ceiling"]["rps"] for r in d.rounds)
            lines.append(
                f"| {d.server} | {d.endpoint} | {d.connections} | {d.ratio:.3f} "
                f"| {min(d.ratios):.3f}-{max(d.ratios):.3f} | {d.cpu_ratio:.3f} | {rps_each:,.0f} "
                f"| {ceiling_each:,.0f} |"
            )

    checks = evaluate_targets(results, duels, args)
    lines += ["", "## Targets", ""]
    lines += [
        "Phoenix as shipped (request log on) against FastAPI + uvicorn as shipped (access log on) and the "
        "ceiling; the last two columns are the same with both logs off. Throughput ratios are head to head "
        "when those rounds ran (a ratio between two servers is then the ratio of their head-to-head ratios "
        "to the ceiling); p99 is of the medians above.",
        "",
        "| target | connections | as shipped | result | logs off | result |",
        "|---|---:|---|---|---|---|",
    ]
    for t in checks:
        lines.append(
            f"| {t.target} | {t.connections if t.connections is not None else '-'} | {t.shipped} "
            f"| {verdict(t.shipped_ok)} | {t.log_off} | {verdict(t.log_off_ok)} |"
        )
    missed = [t for t in checks if t.shipped_ok is False]
    lines.append("")
    if missed:
        lines.append(
            "Missed as shipped: " + "; ".join(f"{t.target} at c = {t.connections}" for t in missed) + "."
        )
    else:
        lines.append("Missed as shipped: none.")

    lines += ["", "## Ratios", ""]
    lines += [
        "| connections | request log | Phoenix /health ÷ ceiling | Phoenix /ready ÷ /health "
        "| Phoenix /health ÷ FastAPI |",
        "|---:|---|---:|---:|---:|",
    ]
    for connections in args.connections:
        for state in ("on", "off"):
            phoenix = f"phoenix (request log {state})"
            health = rps(phoenix, "/health", connections)
            ready = rps(phoenix, "/ready", connections)
            ceiling = rps(CEILING, "/health", connections)
            fastapi = rps(f"fastapi+uvicorn (access log {state})", "/health", connections)
            lines.append(
                f"| {connections} | {state} | {ratio(health, ceiling)} | {ratio(ready, health)} "
                f"| {ratio(health, fastapi)} |"
            )

    lines += ["", "## Memory (VmRSS of the worker processes, MiB)", ""]
    lines += [
        "Read when the server is up, before any load, then after each connection count's rounds; the "
        "maximum is over the readings before and after every run. The growth is after the last load minus "
        "before the first: a soak (`make bench-soak`) measures growth under steady load.",
        "",
    ]
    after_cols = [f"after c = {c}" for c in args.connections]
    lines += [
        "| server | before load | " + " | ".join(after_cols) + " | max | growth |",
        "|---|---:|" + "---:|" * len(after_cols) + "---:|---:|",
    ]
    for name, info in servers.items():
        afters = [info["rss_kb_after_connections"].get(str(c), 0) for c in args.connections]
        peak = max([info["rss_kb_before"], *afters, *(r.rss_kb_max for r in results if r.server == name)])
        growth = info["rss_kb_after"] - info["rss_kb_before"]
        lines.append(
            f"| {name} | {info['rss_kb_before'] / 1024:.1f} | "
            + " | ".join(f"{kb / 1024:.1f}" for kb in afters)
            + f" | {peak / 1024:.1f} | {growth / 1024:+.1f} |"
        )

    lines += ["", "## Errors", ""]
    with_errors = [r for r in results if r.errors]
    if not with_errors:
        lines.append(
            "No socket errors or bad statuses at any connection count "
            f"({', '.join(map(str, args.connections))}); open-files limit (soft/hard) "
            f"{env.get('nofile', '-')}."
        )
    else:
        for r in with_errors:
            kinds = ", ".join(f"{kind} {n}" for kind, n in r.error_kinds.items() if n)
            lines.append(f"- {r.server} {r.endpoint} c = {r.connections}: {kinds}")
        lines.append(f"- open-files limit (soft/hard): {env.get('nofile', '-')}")

    lines += machine_section(env)
    return "\n".join(lines) + "\n"


def chart(results: list[Result], env: dict[str, str], args: argparse.Namespace, path: Path) -> bool:
    """req/s (top row) and p99 (bottom row), one panel per connection count, one bar per server and
    endpoint; written to ``path`` as PNG. False if matplotlib is not available."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        log("matplotlib is not importable: no chart")
        return False
    by_key = {(r.server, r.endpoint, r.connections): r for r in results}
    targets = list(dict.fromkeys((r.server, r.endpoint) for r in results))
    colours = [COLOURS.get(t, "#444444") for t in targets]
    columns = len(args.connections)
    fig, axes = plt.subplots(2, columns, figsize=(3.6 * columns + 1.2, 8.0), squeeze=False)
    rows = [("rps", "req/s (median)"), ("p99_ms", "p99 latency, ms (median, log scale)")]
    for col, connections in enumerate(args.connections):
        ceiling = by_key.get((CEILING, "/health", connections))
        for row, (attr, label) in enumerate(rows):
            ax = axes[row][col]
            found = [by_key.get((server, endpoint, connections)) for server, endpoint in targets]
            values = [float(getattr(r, attr)) if r else 0.0 for r in found]
            bars = ax.bar(range(len(targets)), values, color=colours, width=0.8)
            if attr == "rps":
                texts = [
                    f"{v / 1000:.1f}k" + (f"\n{v / ceiling.rps:.2f}x" if ceiling and ceiling.rps else "")
                    for v in values
                ]
            else:
                texts = [f"{v:.2f}" if v < 10 else f"{v:.0f}" for v in values]
            ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
            if ceiling:  # the ceiling's level across the panel, to read the others against
                ax.axhline(float(getattr(ceiling, attr)), color="#7f7f7f", linestyle="--", linewidth=0.8)
            positive = [v for v in values if v > 0] or [1.0]
            if attr == "rps":
                ax.set_ylim(0, max(positive) * 1.25)
            else:  # FastAPI's tail is 10-100x the others: a log scale keeps Phoenix and the ceiling readable
                ax.set_yscale("log")
                ax.set_ylim(min(positive) / 2, max(positive) * 3)
                ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
                ax.yaxis.set_minor_formatter(
                    lambda v, _pos: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""  # label 2, 5, 20, 50, ...
                )
                ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_title(f"c = {connections}: {label}", fontsize=10)
            ax.set_xticks([])
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if attr == "rps":
                ax.yaxis.set_major_formatter(lambda v, _pos: f"{v / 1000:.0f}k")
    handles = [
        Patch(color=c, label=f"{server} {endpoint}")
        for (server, endpoint), c in zip(targets, colours, strict=True)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(
        f"Phoenix HTTP benchmark, {env['date']}: median of {args.rounds} x {args.duration} s rounds, "
        f"server on core {SERVER_CPU}, wrk -t1 on core {WRK_CPU}\n"
        f"{env['cpu_model']}, {env['nproc']} cores, Python {env['python']}, granian {env['granian']}, "
        f"commit {env['commit']}; req/s labels: k req/s and ratio to the ceiling (dashed line)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds per round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point; the median is reported")
    parser.add_argument(
        "--connections",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 50, 500],
        help="comma-separated wrk connection counts (default 1,50,500)",
    )
    parser.add_argument(
        "--h2h-rounds",
        type=int,
        default=5,
        help="head-to-head rounds per connection count against the ceiling (default 5; 0: none)",
    )
    parser.add_argument("--out", type=Path, default=BENCHES / "results", help="report directory")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or min(args.connections) < 1 or args.h2h_rounds < 0:
        parser.error("--duration, --rounds and --connections must be positive, --h2h-rounds not negative")
    return args


def prepare_load_run(connections: int) -> str:
    """What every load script needs first: SIGTERM unwinding like Ctrl-C (through the finally blocks
    that stop servers and wrk), two pinnable cores, wrk, and enough file descriptors for
    ``connections``. Returns the open-files limit for the report."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if len(os.sched_getaffinity(0)) < 2 or not shutil.which("taskset"):
        sys.exit("needs taskset and at least 2 usable cores (server on core 0, wrk on core 1)")
    ensure_apt("wrk", "wrk")
    return raise_nofile(connections)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare_load_run(max(args.connections))
    with_fastapi = ensure_fastapi()
    with_chart = ensure_matplotlib()
    started = dt.datetime.now()
    env = run_env(started, nofile=nofile)
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-http-") as tmp:
        results, duels, servers = bench(server_specs(Path(tmp), with_fastapi), Path(tmp), args)
    env["loadavg_after"] = Path("/proc/loadavg").read_text().strip()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"http-{started.strftime('%Y-%m-%d-%H%M%S')}"
    png = stem.with_suffix(".png")
    chart_name = png.name if with_chart and chart(results, env, args, png) else None
    markdown = report(results, duels, servers, env, args, chart_name)
    raw = {
        "machine": env,
        "args": vars(args) | {"out": str(args.out)},
        "servers": servers,
        "results": [asdict(r) for r in results],
        "head_to_head": [
            asdict(d)
            | {"ratios": d.ratios, "cpu_ratios": d.cpu_ratios, "ratio": d.ratio, "cpu_ratio": d.cpu_ratio}
            for d in duels
        ],
    }
    save_report(stem, markdown, raw)
    if chart_name:
        log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
