"""HTTP benchmark: Phoenix's /health and /ready against a Granian ceiling, FastAPI + uvicorn and nginx.

Phoenix on its main port and its probe listener, over HTTP/1.1 and HTTP/2. Run:

    python benches/http_harness.py [--duration 5] [--rounds 3] [--connections 1,50,500] \
        [--h2h-rounds 5] [--only main,probe,h2] [--quiet-wait 60] [--out benches/results]

Groups of rows (``--only``; all by default):
- ``main``: the main port over HTTP/1.1: the ceiling, its twin, Phoenix (request log on and off, metrics
  on as shipped; and /health of each with metrics off), FastAPI + uvicorn.
- ``probe``: Phoenix's probe listener (``phoenix serve --probe-port``, request log on) against nginx
  (Debian's ``nginx-light``, ``return 200`` with the same body, one worker, no access log; see
  ``nginx_reference.conf``) and nginx's twin; the bare hyper server the listener is built on
  (``benches/bare_hyper.rs``, built by cargo with the release profile) against nginx; and Phoenix's main
  port with the listener on.
- ``h2``: HTTP/2 cleartext (prior knowledge) loaded by ``h2load``: Phoenix ``--http 2`` against the
  ceiling ``--http 2``, the probe port against nginx, and nginx's twin.

All servers run pinned to core 0 and the load generators (``wrk -t1`` for HTTP/1.1, ``h2load -t1 -m1``
for HTTP/2: one request in flight per connection either way) to core 1 (``taskset``), with the same
settings for each: per connection count a 2 s warm-up per target, then ``--rounds`` runs of
``--duration`` seconds, taken in turns across the targets; the median round is reported. Each server's
RSS is read before and after every load. Then ``--h2h-rounds`` head-to-head rounds: each challenger
loaded at the same time as its reference (the ceiling, nginx, or their HTTP/2 forms), the two servers
sharing core 0, so that the shared machine's drift, larger than the differences judged, slows both alike
(see ``head_to_head``). The markdown report (with the machine description and the issue's targets
evaluated), a PNG chart of the HTTP/1.1 req/s and p99 (matplotlib) and the raw JSON go to ``--out``.
Compare ratios within one run, not numbers across runs. nginx and h2load are installed with apt-get
when missing (as root); on a machine with an init system Debian's nginx package also starts its default
site, which the harness leaves alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import importlib.util
import json
import math
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
LUA = BENCHES / "wrk_report.lua"
NGINX_CONF = BENCHES / "nginx_reference.conf"
HOST = "127.0.0.1"
SERVER_CPU = "0"
WRK_CPU = "1"  # every load generator's core: wrk's and h2load's
WARMUP_S = 2
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
QUIET_PCT = 15.0  # the machine counts as quiet below this much busy CPU, in % of one core
QUIET_TIMEOUT_S = 60.0
# Row labels. Each names one listener (a port, and the protocol it is loaded with) of one server process.
CEILING = "ceiling (granian rsgi)"
# A second, identical ceiling: head to head against the first it shows the method's own error.
CEILING_TWIN = "ceiling, second instance"
PHOENIX_ON = "phoenix (request log on)"
PHOENIX_OFF = "phoenix (request log off)"
# The same two with metrics off (the rows above have them on, the default): what recording them costs.
PHOENIX_ON_METRICS_OFF = "phoenix (request log on, metrics off)"
PHOENIX_OFF_METRICS_OFF = "phoenix (request log off, metrics off)"
FASTAPI_ON = "fastapi+uvicorn (access log on)"
FASTAPI_OFF = "fastapi+uvicorn (access log off)"
NGINX = "nginx (return 200, one worker)"
NGINX_TWIN = "nginx, second instance"
# One process: Phoenix serving its main port and, with --probe-port, its probe listener (HTTP/1.1 and h2c).
PHOENIX_LISTENER = "phoenix, probe listener on: main port"
PROBE = "phoenix probe port"
# The same with the request log off: what the log costs on the probe port (nginx runs without one).
PHOENIX_LISTENER_OFF = "phoenix, probe listener on, request log off: main port"
PROBE_LOG_OFF = "phoenix probe port (request log off)"
# HTTP/2 cleartext with prior knowledge, loaded by h2load.
CEILING_H2 = "ceiling --http 2 (h2c)"
PHOENIX_H2 = "phoenix --http 2 (h2c)"
NGINX_H2 = "nginx (h2c)"
NGINX_H2_TWIN = "nginx, second instance (h2c)"
PROBE_H2 = "phoenix probe port (h2c)"
# The stack the probe listener is built on, alone: hyper 1 on a current-thread tokio runtime answering the
# same body (benches/bare_hyper.rs). What the listener adds (routing, the cache, metrics, the request log)
# is the listener's ratio to it; what hyper itself leaves against nginx is its own ratio to nginx.
BARE_HYPER = "bare hyper (static body)"
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
# Issue 9, section "Speed": the probe port's /health against nginx, its /ready against its /health.
TARGET_NGINX_RATIO = 0.95
TARGET_PROBE_READY_RATIO = 0.9
# The same target against the bare hyper server: the share of the stack's speed the listener keeps.
TARGET_BARE_HYPER_RATIO = 0.95
# "Enabling the listener must not lower the main port's ratios": the main port's ratio to the ceiling
# with the listener over the same without it. A ratio of two head-to-head ratios, each within about 1 %
# of the truth (as the twins show), so "no lower" is judged to within 2 %.
TARGET_LISTENER_RATIO = 0.98
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


def which(command: str) -> str | None:
    """``command``'s path, looking in the sbin directories too (nginx is in /usr/sbin, off a user's PATH)."""
    return shutil.which(command, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def ensure_apt(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` for it if missing."""
    found = which(command)
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit(f"{command} is missing; install it (apt-get install -y {package}) or run as root")
    log(f"{command} is missing: apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=600, check=True)
    found = which(command)
    if not found:
        sys.exit(f"apt-get install {package} did not provide {command}")
    return found


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
        "nginx": run_text([nginx, "-v"]) if (nginx := which("nginx")) else "-",
        "h2load": run_text(["h2load", "--version"]) if shutil.which("h2load") else "-",
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


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while they are picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


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


def wait_quiet(timeout_s: float = QUIET_TIMEOUT_S) -> float:
    """Waits, at most ``timeout_s``, until the shared machine is idle between rounds (our servers are idle
    then, so any load is someone else's). Returns the busy % of the last 0.5 s sample."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy, started = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        busy_pct = 100 * (machine_busy_seconds() - busy) / (time.monotonic() - started)
        if busy_pct < QUIET_PCT or time.monotonic() > deadline:
            if busy_pct >= QUIET_PCT:
                log(f"machine still busy ({busy_pct:.0f}% of a core) after {timeout_s:.0f} s; going on")
            return busy_pct


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children: around a wrk run, wrk's own CPU time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ListenerSpec:
    """One port of a server process, and how it is loaded."""

    name: str  # the label of its rows
    endpoints: list[str]
    group: str  # the --only group its rows belong to
    port_key: str = "port"  # the placeholder in the argv and files ("{port}", "{probe_port}", ...)
    http2: bool = False  # HTTP/2 cleartext with prior knowledge (h2load), else HTTP/1.1 (wrk)


@dataclass
class ServerSpec:
    """One server process. ``name``, ``endpoints``, ``group`` and ``http2`` describe its main listener
    (on "{port}"); ``more_listeners`` its other ports."""

    name: str
    argv: list[str]  # "{port}" (and any other "{..._port}") is replaced by the port the server is given
    endpoints: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    group: str = "main"
    http2: bool = False
    more_listeners: list[ListenerSpec] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)  # written before it starts, placeholders replaced
    # Other answers of its main listener (endpoint: status), checked once it is ready: its configuration
    # shown in effect, so that a row's label cannot claim a setting the server ignored.
    expect: dict[str, int] = field(default_factory=dict)

    @property
    def listeners(self) -> list[ListenerSpec]:
        main = ListenerSpec(self.name, self.endpoints, self.group, http2=self.http2)
        return [main, *self.more_listeners]


@dataclass
class Listener:
    """A started server's port, as its rows name it."""

    name: str
    server: Server
    port: int
    endpoints: list[str]
    http2: bool

    @property
    def protocol(self) -> str:
        return "h2c" if self.http2 else "http/1.1"

    def url(self, endpoint: str) -> str:
        return f"http://{HOST}:{self.port}{endpoint}"


class Server:
    """One server subprocess, pinned to SERVER_CPU, in its own process group."""

    def __init__(self, spec: ServerSpec, workdir: Path) -> None:
        self.spec = spec
        keys = sorted({listener.port_key for listener in spec.listeners})
        self.ports = dict(zip(keys, free_ports(len(keys)), strict=True))
        self.port = self.ports["port"]

        def fill(text: str) -> str:
            for key, port in self.ports.items():
                text = text.replace("{" + key + "}", str(port))
            return text

        self.argv = [fill(arg) for arg in spec.argv]
        for path, text in spec.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fill(text))
        self.listeners = [
            Listener(ls.name, self, self.ports[ls.port_key], ls.endpoints, ls.http2) for ls in spec.listeners
        ]
        self.body_bytes: dict[str, dict[str, int]] = {}  # per listener, per endpoint: see wait_ready
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
        return self.listeners[0].url(endpoint)

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

    def wait_ready(
        self, timeout_s: float = START_TIMEOUT_S, listeners: list[Listener] | None = None
    ) -> dict[str, int]:
        """Polls the ports of ``listeners`` (default: all), then each of their endpoints until it answers
        200. Records each endpoint's body size in ``body_bytes``; returns the main listener's."""
        deadline = time.monotonic() + timeout_s
        listeners = self.listeners if listeners is None else listeners
        for port in sorted({listener.port for listener in listeners}):
            while True:
                self.check_alive()
                try:
                    socket.create_connection((HOST, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.spec.name}: port {port} not open") from None
                    time.sleep(0.05)
        for listener in listeners:
            sizes = self.body_bytes.setdefault(listener.name, {})
            get = h2_get if listener.http2 else http_get
            for endpoint in listener.endpoints:
                while True:
                    self.check_alive()
                    status, size = get(listener.port, endpoint)
                    if status == 200:
                        sizes[endpoint] = size
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{listener.name}: {endpoint} answered {status}, not 200")
                    time.sleep(0.05)
        return self.body_bytes.get(self.spec.name, {})

    def check_expected(self) -> None:
        """Raises unless the main listener answers ``spec.expect`` as stated."""
        get = h2_get if self.spec.http2 else http_get
        for endpoint, expected in self.spec.expect.items():
            status, _size = get(self.port, endpoint)
            if status != expected:
                raise RuntimeError(f"{self.spec.name}: {endpoint} answered {status}, not {expected}")

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


def http_get(port: int, endpoint: str) -> tuple[int, int]:
    """One HTTP/1.1 GET: the status (0 if none came) and the body's size."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", endpoint)
        response = conn.getresponse()
        return response.status, len(response.read())
    except OSError:
        return 0, 0
    finally:
        conn.close()


def h2_get(port: int, endpoint: str) -> tuple[int, int]:
    """One h2c GET (prior knowledge) by h2load: 200 for any 2xx (h2load counts status classes only), else
    0; and the body's size."""
    argv = ["h2load", "-n1", "-c1", "-m1", f"http://{HOST}:{port}{endpoint}"]
    text = run_text(argv, timeout=10)
    status = H2LOAD_STATUS.search(text)
    traffic = H2LOAD_TRAFFIC.search(text)
    if status is None or traffic is None or int(status["ok"]) != 1:
        return 0, 0
    return 200, int(traffic["data"])


# --- load generators -------------------------------------------------------------------------------


def measured(
    argv: list[str], seconds: int, server: Server, parse: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """Runs one load generator (``argv``, pinned to WRK_CPU) against ``server``; ``parse`` reads its
    stdout into a summary (requests, duration_us, bytes, errors, latency_us), completed here with req/s,
    the server's RSS and the CPU used by the server, by the load generator and by everything else."""
    pids = server.all_pids()
    rss_before = server.rss_kb()
    server_cpu, client_cpu, busy = cpu_seconds(pids), children_cpu_seconds(), machine_busy_seconds()
    started = time.monotonic()
    done = subprocess.run(
        ["taskset", "-c", WRK_CPU, *argv], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    wall = time.monotonic() - started
    server_cpu, client_cpu = cpu_seconds(pids) - server_cpu, children_cpu_seconds() - client_cpu
    busy = machine_busy_seconds() - busy
    try:
        if done.returncode != 0:
            raise ValueError(f"exit status {done.returncode}")
        report = parse(done.stdout)
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"{' '.join(argv)} failed ({exc}): {done.stdout}\n{done.stderr}") from None
    report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
    report["rss_kb_before"], report["rss_kb_after"] = rss_before, server.rss_kb()
    report["server_cpu_pct"] = 100 * server_cpu / wall
    report["wrk_cpu_pct"] = 100 * client_cpu / wall  # the load generator's, wrk or h2load
    # Whatever else ran meanwhile (other processes, kernel work, steal), in % of one core.
    report["other_cpu_pct"] = max(0.0, 100 * (busy - server_cpu - client_cpu) / wall)
    return report


def wrk(url: str, connections: int, seconds: int, server: Server) -> dict[str, Any]:
    """One ``wrk -t1`` run (HTTP/1.1); wrk_report.lua's summary plus req/s and the CPU used."""

    def parse(stdout: str) -> dict[str, Any]:
        lines = [line for line in stdout.splitlines() if line.startswith("WRK_JSON ")]
        if not lines:
            raise ValueError("no WRK_JSON line")
        report: dict[str, Any] = json.loads(lines[-1].removeprefix("WRK_JSON "))
        return report

    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA), url]
    return measured(argv, seconds, server, parse)


H2LOAD_FINISHED = re.compile(r"^finished in (?P<time>[\d.]+)(?P<unit>s|ms|us),", re.MULTILINE)
H2LOAD_REQUESTS = re.compile(
    r"^requests: \d+ total, \d+ started, (?P<done>\d+) done, \d+ succeeded, (?P<failed>\d+) failed,",
    re.MULTILINE,
)
H2LOAD_STATUS = re.compile(
    r"^status codes: (?P<ok>\d+) 2xx, \d+ 3xx, (?P<client>\d+) 4xx, (?P<server>\d+) 5xx", re.MULTILINE
)
H2LOAD_TRAFFIC = re.compile(r"^traffic: .*?\((?P<total>\d+)\) total, .*\((?P<data>\d+)\) data", re.MULTILINE)
H2LOAD_UNIT_US = {"s": 1e6, "ms": 1e3, "us": 1.0}


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def h2load(url: str, connections: int, seconds: int, server: Server) -> dict[str, Any]:
    """One ``h2load -t1 -m1 -D`` run (h2c with prior knowledge), summarized as ``wrk`` does. Latency
    percentiles come from its per-request log (its text output has only min, mean, max and sd)."""
    with tempfile.TemporaryDirectory(prefix="phoenix-h2load-") as tmp:
        log_file = Path(tmp) / "requests.tsv"

        def parse(stdout: str) -> dict[str, Any]:
            finished = H2LOAD_FINISHED.search(stdout)
            requests = H2LOAD_REQUESTS.search(stdout)
            status = H2LOAD_STATUS.search(stdout)
            traffic = H2LOAD_TRAFFIC.search(stdout)
            if not (finished and requests and status and traffic):
                raise ValueError("unexpected output")
            # Per request: start time (us since the epoch), status, time to the end of the response (us).
            latencies = sorted(
                float(line.split("\t")[2]) for line in log_file.read_text().splitlines() if line
            )
            if not latencies:
                raise ValueError("no request completed")
            bad_status = int(status["client"]) + int(status["server"])
            return {
                "requests": int(requests["done"]),
                "duration_us": float(finished["time"]) * H2LOAD_UNIT_US[finished["unit"]],
                "bytes": int(traffic["total"]),
                # h2load's "failed" counts bad statuses and the rest ("errored": resets, timeouts, ...).
                "errors": {"status": bad_status, "errored": int(requests["failed"]) - bad_status},
                "latency_us": {
                    "min": latencies[0],
                    "mean": statistics.fmean(latencies),
                    "max": latencies[-1],
                    **{f"p{str(p).replace('.', '')}": percentile(latencies, p) for p in (50, 90, 99, 99.9)},
                },
            }

        argv = ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{seconds}", f"--log-file={log_file}", url]
        return measured(argv, seconds, server, parse)


def load(listener: Listener, endpoint: str, connections: int, seconds: int) -> dict[str, Any]:
    """One run of the load generator that speaks ``listener``'s protocol."""
    client = h2load if listener.http2 else wrk
    return client(listener.url(endpoint), connections, seconds, listener.server)


@dataclass
class Result:
    server: str
    endpoint: str
    connections: int
    protocol: str  # "http/1.1" (loaded by wrk) or "h2c" (by h2load)
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_pct: float
    wrk_cpu_pct: float
    other_cpu_pct: float
    bytes_per_response: float  # headers and body as received (for h2c, with HTTP/2 framing)
    errors: int
    # Summed over rounds. wrk: connect, read, write, status (non-2xx/3xx), timeout; h2load: status, errored.
    error_kinds: dict[str, int]
    rss_kb_max: int  # the largest server RSS read around this point's runs
    rounds: list[dict[str, Any]]


def summarize(listener: Listener, endpoint: str, connections: int, rounds: list[dict[str, Any]]) -> Result:
    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    server = listener.name
    result = Result(
        server=server,
        endpoint=endpoint,
        connections=connections,
        protocol=listener.protocol,
        rps=median("rps"),
        p50_ms=statistics.median(r["latency_us"]["p50"] for r in rounds) / 1000,
        p99_ms=statistics.median(r["latency_us"]["p99"] for r in rounds) / 1000,
        server_cpu_pct=median("server_cpu_pct"),
        wrk_cpu_pct=median("wrk_cpu_pct"),
        other_cpu_pct=median("other_cpu_pct"),
        bytes_per_response=statistics.median(r["bytes"] / r["requests"] for r in rounds if r["requests"]),
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
    """Rounds in which ``server`` (at ``endpoint``) and its reference (``reference`` at
    ``reference_endpoint``: the ceiling, nginx, or their h2c forms) were loaded at once, sharing the server
    core: each round holds both runs, ``challenger`` and ``reference``."""

    server: str
    endpoint: str
    connections: int
    reference: str
    reference_endpoint: str
    protocol: str
    rounds: list[dict[str, Any]]

    @property
    def ratios(self) -> list[float]:
        """Per round, the challenger's req/s over the reference's."""
        return [r["challenger"]["rps"] / r["reference"]["rps"] for r in self.rounds]

    @property
    def cpu_ratios(self) -> list[float]:
        """Per round, the same from requests per CPU-second of each server."""
        return [
            requests_per_cpu_second(r["challenger"]) / requests_per_cpu_second(r["reference"])
            for r in self.rounds
        ]

    @property
    def ratio(self) -> float:
        return float(statistics.median(self.ratios))

    @property
    def cpu_ratio(self) -> float:
        return float(statistics.median(self.cpu_ratios))

    @property
    def servers_cpu_pct(self) -> float:
        """Both servers' CPU, in % of their one core (median over rounds): near 100 when the servers set
        the pace; below, the load generators (sharing the other core) do, and the req/s ratio leans
        towards 1 while the per-CPU-second ratio still compares the servers' costs."""
        return float(
            statistics.median(
                r["challenger"]["server_cpu_pct"] + r["reference"]["server_cpu_pct"] for r in self.rounds
            )
        )

    def median(self, side: str, key: str) -> float:
        """The median over rounds of ``side``'s ("challenger" or "reference") ``key``: "rps", "p99", ..."""
        if key == "rps":
            return float(statistics.median(r[side]["rps"] for r in self.rounds))
        return float(statistics.median(r[side]["latency_us"][key] for r in self.rounds)) / 1000


def load_together(loads: list[tuple[Listener, str]], connections: int, seconds: int) -> list[dict[str, Any]]:
    """One load generator per (listener, endpoint), all started together (every one on WRK_CPU, every
    server on SERVER_CPU); with several, their load-generator and other-CPU columns are shared and mean
    nothing. If a load generator fails, all are run once more, their runs marked with the first failure
    ("retried_after", listed in the report): on this shared machine, with both cores busy with others'
    work, an h2load run has now and then ended with nothing done (no connection made within the run), and
    one such run should not end a half-hour benchmark. A server that has exited fails for good."""

    def run_all() -> list[dict[str, Any]]:
        with ThreadPoolExecutor(len(loads)) as pool:
            runs = [
                pool.submit(load, listener, endpoint, connections, seconds) for listener, endpoint in loads
            ]
            return [run.result() for run in runs]

    try:
        return run_all()
    except RuntimeError as exc:
        for listener, _endpoint in loads:
            listener.server.check_alive()
        reason = str(exc).splitlines()[0]
        tails = "".join(
            f"\n{listener.name}'s server log ends:\n{listener.server.log_tail(5)}" for listener, _ in loads
        )
        log(f"{reason}{tails}\nrunning c={connections} once more")
        runs = run_all()
        for run in runs:
            run["retried_after"] = reason
        return runs


# --- servers ---------------------------------------------------------------------------------------


def build_bare_hyper() -> Path:
    """The bare hyper reference (``benches/bare_hyper.rs``), built with the release profile that the
    shipped core is built with, in a target directory of its own so that the extension's build is left
    alone. The first build takes minutes."""
    target = BENCHES.parent / "target" / "bench-reference"
    log("building the bare hyper reference (cargo build --release --example bare_hyper)")
    subprocess.run(
        ["cargo", "build", "-q", "--release", "--example", "bare_hyper", "--target-dir", str(target)],
        cwd=BENCHES.parent,
        check=True,
        timeout=1800,
    )
    return target / "release" / "examples" / "bare_hyper"


def server_specs(workdir: Path, with_fastapi: bool, bare_hyper: Path | None = None) -> list[ServerSpec]:
    """Every server process the harness knows; ``bench`` starts those the selected groups need."""
    from ceiling_app import BODY  # Phoenix's /health body, in shape and length: nginx answers it too
    from phoenix.config import DEFAULTS  # the log level Phoenix ships with, for the ceiling too

    log_level = DEFAULTS.log_level
    python = sys.executable
    phoenix = [str(Path(python).parent / "phoenix"), "serve"]
    log_on = {"PHOENIX_REQUEST_LOG": "true"}
    probe_port = ["--probe-port", "{probe_port}"]

    def data_dir(name: str) -> str:
        return str(workdir / ("data-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")))

    ceiling = [python, str(BENCHES / "ceiling_app.py"), "--log-level", log_level, "--port", "{port}"]
    specs = [ServerSpec(name, ceiling, ["/health"], cwd=BENCHES) for name in (CEILING, CEILING_TWIN)]
    for name, request_log, metrics, endpoints in (
        (PHOENIX_ON, "true", True, ["/health", "/ready"]),
        (PHOENIX_OFF, "false", True, ["/health", "/ready"]),
        (PHOENIX_ON_METRICS_OFF, "true", False, ["/health"]),
        (PHOENIX_OFF_METRICS_OFF, "false", False, ["/health"]),
    ):
        specs.append(
            ServerSpec(
                name,
                [*phoenix, "--data-dir", data_dir(name), "--port", "{port}"],
                endpoints,
                env={"PHOENIX_REQUEST_LOG": request_log, "PHOENIX_METRICS": str(metrics).lower()},
                cwd=workdir,
                expect={"/metrics": 200 if metrics else 404},
            )
        )
    if with_fastapi:
        uvicorn = [python, "-m", "uvicorn", "--app-dir", str(BENCHES), "fastapi_app:app"]
        uvicorn += ["--host", HOST, "--port", "{port}", "--log-level", log_level]
        specs.append(ServerSpec(FASTAPI_ON, uvicorn, ["/health"]))
        specs.append(ServerSpec(FASTAPI_OFF, [*uvicorn, "--no-access-log"], ["/health"]))

    specs.append(
        ServerSpec(
            PHOENIX_LISTENER,
            [*phoenix, "--data-dir", data_dir(PHOENIX_LISTENER), "--port", "{port}", *probe_port],
            ["/health"],
            env=log_on,
            cwd=workdir,
            group="probe",
            more_listeners=[
                ListenerSpec(PROBE, ["/health", "/ready"], "probe", "probe_port"),
                ListenerSpec(PROBE_H2, ["/health"], "h2", "probe_port", http2=True),
            ],
        )
    )
    specs.append(
        ServerSpec(
            PHOENIX_LISTENER_OFF,
            [*phoenix, "--data-dir", data_dir(PHOENIX_LISTENER_OFF), "--port", "{port}", *probe_port],
            ["/health"],
            env={"PHOENIX_REQUEST_LOG": "false"},
            cwd=workdir,
            group="probe",
            more_listeners=[ListenerSpec(PROBE_LOG_OFF, ["/health"], "probe", "probe_port")],
        )
    )
    template = NGINX_CONF.read_text().replace("{body}", BODY.decode())
    for name, h2_name in ((NGINX, NGINX_H2), (NGINX_TWIN, NGINX_H2_TWIN)):
        own_dir = workdir / re.sub(r"[^a-z0-9]+", "-", name).strip("-")
        conf = own_dir / "nginx.conf"
        specs.append(
            ServerSpec(
                name,
                [which("nginx") or "nginx", "-p", str(own_dir), "-c", str(conf), "-e", "stderr"],
                ["/health"],
                group="probe",
                more_listeners=[ListenerSpec(h2_name, ["/health"], "h2", "h2_port", http2=True)],
                files={conf: template.replace("{dir}", str(own_dir))},
            )
        )
    if bare_hyper is not None:
        argv = [str(bare_hyper), "{port}", BODY.decode()]
        specs.append(ServerSpec(BARE_HYPER, argv, ["/health"], group="probe"))
    specs.append(
        ServerSpec(CEILING_H2, [*ceiling, "--http", "2"], ["/health"], cwd=BENCHES, group="h2", http2=True)
    )
    specs.append(
        ServerSpec(
            PHOENIX_H2,
            [*phoenix, "--data-dir", data_dir(PHOENIX_H2), "--port", "{port}", "--http", "2"],
            ["/health"],
            env=log_on,
            cwd=workdir,
            group="h2",
            http2=True,
        )
    )
    return specs


Pair = tuple[str, str]  # (row label, endpoint)
# Head-to-head pairs per --only group: (challenger, reference); a challenger has one reference. The twins
# come first, for the method's own error. FastAPI is loaded against the ceiling too, so that Phoenix ÷
# FastAPI is a ratio of two head-to-head ratios; likewise the probe port's /ready ÷ its /health, through
# nginx: both loaded on the probe port at once would be served by one listener taking connections in
# turn, so each load would get the same share whatever a request costs (a ratio of 1 by construction).
DUELS: dict[str, list[tuple[Pair, Pair]]] = {
    "main": [
        ((name, endpoint), (CEILING, "/health"))
        for name, endpoint in [
            (CEILING_TWIN, "/health"),
            (PHOENIX_ON, "/health"),
            (PHOENIX_ON, "/ready"),
            (PHOENIX_OFF, "/health"),
            (PHOENIX_OFF, "/ready"),
            (PHOENIX_ON_METRICS_OFF, "/health"),
            (PHOENIX_OFF_METRICS_OFF, "/health"),
            (FASTAPI_ON, "/health"),
            (FASTAPI_OFF, "/health"),
        ]
    ],
    "probe": [
        ((NGINX_TWIN, "/health"), (NGINX, "/health")),
        ((PROBE, "/health"), (NGINX, "/health")),
        ((PROBE, "/ready"), (NGINX, "/health")),
        ((PROBE_LOG_OFF, "/health"), (NGINX, "/health")),
        ((BARE_HYPER, "/health"), (NGINX, "/health")),
        # The main port with the listener on against the same without it, each through the ceiling.
        ((PHOENIX_LISTENER, "/health"), (CEILING, "/health")),
        ((PHOENIX_ON, "/health"), (CEILING, "/health")),
    ],
    "h2": [
        ((NGINX_H2_TWIN, "/health"), (NGINX_H2, "/health")),
        ((PROBE_H2, "/health"), (NGINX_H2, "/health")),
        ((PHOENIX_H2, "/health"), (CEILING_H2, "/health")),
    ],
}
GROUPS = list(DUELS)
# The twin of each reference, whose duel with it shows the method's error.
TWIN_OF = {CEILING: CEILING_TWIN, NGINX: NGINX_TWIN, NGINX_H2: NGINX_H2_TWIN}


def selection(specs: list[ServerSpec], groups: list[str]) -> tuple[list[Pair], list[tuple[Pair, Pair]]]:
    """The rows measured alone (every endpoint of every listener in ``groups``, and each side of their
    duels) and the duels, both in a fixed order, for the servers in ``specs``."""
    known = {(ls.name, endpoint) for spec in specs for ls in spec.listeners for endpoint in ls.endpoints}
    duels = list(
        dict.fromkeys(
            duel for group in groups for duel in DUELS[group] if duel[0] in known and duel[1] in known
        )
    )
    in_duels = {pair for duel in duels for pair in duel}
    rows = [
        (ls.name, endpoint)
        for spec in specs
        for ls in spec.listeners
        for endpoint in ls.endpoints
        if ls.group in groups or (ls.name, endpoint) in in_duels
    ]
    return rows, duels


def bench(
    specs: list[ServerSpec], workdir: Path, args: argparse.Namespace
) -> tuple[list[Result], list[HeadToHead], dict[str, Any]]:
    """Starts every server the selected groups need (idle ones cost core 0 nothing), then measures them in
    turns: per connection count, each target's warm-up, then round 1 of every target, round 2 of every
    target, ... so that a disturbance on the shared machine spreads over all targets instead of falling
    on one. Then the head-to-head rounds (see `head_to_head`)."""
    rows, duel_pairs = selection(specs, args.only)
    needed = {name for name, _endpoint in rows}
    with contextlib.ExitStack() as stack:
        servers = []
        info: dict[str, Any] = {}
        for spec in specs:
            if not any(ls.name in needed for ls in spec.listeners):
                continue
            log(f"starting {spec.name}")
            server = stack.enter_context(running(spec, workdir))
            # Ready (its ports bound) before the next server picks free ports.
            server.wait_ready(listeners=[ls for ls in server.listeners if ls.name in needed])
            server.check_expected()
            info[spec.name] = {"argv": server.argv, "env": spec.env, "body_bytes": server.body_bytes}
            servers.append(server)
        for server in servers:
            info[server.spec.name]["rss_kb_before"] = server.rss_kb()
            info[server.spec.name]["rss_kb_after_connections"] = {}
        listeners = {ls.name: ls for server in servers for ls in server.listeners}
        targets = [(listeners[name], endpoint) for name, endpoint in rows]
        results = []
        duels: list[HeadToHead] = []
        for connections in args.connections:
            rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for listener, endpoint in targets:
                load_together([(listener, endpoint)], connections, WARMUP_S)
                rounds[listener.name, endpoint] = []
            for n in range(args.rounds):
                log(f"c={connections}: round {n + 1} of {args.rounds}")
                shift = n % len(targets)  # rotate the order, so no target always follows the same one
                for listener, endpoint in targets[shift:] + targets[:shift]:
                    idle_busy_pct = wait_quiet(args.quiet_wait)
                    [run] = load_together([(listener, endpoint)], connections, args.duration)
                    run["busy_pct_before"] = idle_busy_pct
                    rounds[listener.name, endpoint].append(run)
            for listener, endpoint in targets:
                results.append(summarize(listener, endpoint, connections, rounds[listener.name, endpoint]))
            duels += head_to_head(listeners, duel_pairs, connections, args)
            for server in servers:
                info[server.spec.name]["rss_kb_after_connections"][str(connections)] = server.rss_kb()
        for server in servers:
            info[server.spec.name]["rss_kb_after"] = server.rss_kb()
            info[server.spec.name]["worker_pids"] = server.workers()
        return results, duels, info


def head_to_head(
    listeners: dict[str, Listener],
    pairs: list[tuple[Pair, Pair]],
    connections: int,
    args: argparse.Namespace,
) -> list[HeadToHead]:
    """Each challenger and its reference loaded at the same time, sharing the server core, for
    ``--h2h-rounds`` rounds (challengers in turns, rotated per round). Whatever slows the shared machine
    down during a round slows both alike, so the ratio of their req/s holds still where sequential
    rounds swing by ±10 %: with both CPU-bound, it is the ratio of their costs per request."""
    if args.h2h_rounds == 0 or not pairs:
        return []
    runs: dict[tuple[Pair, Pair], list[dict[str, Any]]] = {pair: [] for pair in pairs}
    for n in range(args.h2h_rounds):
        log(f"c={connections}: head to head, round {n + 1} of {args.h2h_rounds}")
        shift = n % len(pairs)
        for (name, endpoint), (reference, reference_endpoint) in pairs[shift:] + pairs[:shift]:
            wait_quiet(args.quiet_wait)
            challenger, against = load_together(
                [(listeners[name], endpoint), (listeners[reference], reference_endpoint)],
                connections,
                args.duration,
            )
            runs[(name, endpoint), (reference, reference_endpoint)].append(
                {"challenger": challenger, "reference": against}
            )
    duels = []
    for ((name, endpoint), (reference, reference_endpoint)), rounds in runs.items():
        duel = HeadToHead(
            server=name,
            endpoint=endpoint,
            connections=connections,
            reference=reference,
            reference_endpoint=reference_endpoint,
            protocol=listeners[name].protocol,
            rounds=rounds,
        )
        log(
            f"{name} {endpoint} c={connections} head to head: {duel.ratio:.3f}x {reference} "
            f"(rounds {min(duel.ratios):.3f}-{max(duel.ratios):.3f})"
        )
        duels.append(duel)
    return duels


# --- report ----------------------------------------------------------------------------------------


# Chart colours: the ceiling grey, Phoenix blues (log on) and greens (log off), with metrics off cyans,
# FastAPI oranges, nginx reds, the probe listener purples.
COLOURS = {
    (CEILING, "/health"): "#7f7f7f",
    (CEILING_TWIN, "/health"): "#b5b5b5",
    (PHOENIX_ON, "/health"): "#1f4e9c",
    (PHOENIX_ON, "/ready"): "#6f9fe0",
    (PHOENIX_OFF, "/health"): "#1b7a3a",
    (PHOENIX_OFF, "/ready"): "#7cc48f",
    (PHOENIX_ON_METRICS_OFF, "/health"): "#17becf",
    (PHOENIX_OFF_METRICS_OFF, "/health"): "#9edae5",
    (FASTAPI_ON, "/health"): "#d9661f",
    (FASTAPI_OFF, "/health"): "#f2b27c",
    (NGINX, "/health"): "#a31515",
    (NGINX_TWIN, "/health"): "#e07b7b",
    (PHOENIX_LISTENER, "/health"): "#0e2f66",
    (PROBE, "/health"): "#5b2a86",
    (PROBE, "/ready"): "#a98bd0",
}
# What each reference is called in the report's sentences.
SHORT = {CEILING: "the ceiling", NGINX: "nginx", CEILING_H2: "the h2c ceiling", NGINX_H2: "nginx h2c"}

Key = tuple[str, str, int]  # (row label, endpoint, connections)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "**MISS**")


class Figures:
    """One run's sequential medians and head-to-head duels, looked up by (row label, endpoint, c)."""

    def __init__(self, results: list[Result], duels: list[HeadToHead]) -> None:
        self.results = results
        self.duels = duels
        self.result = {(r.server, r.endpoint, r.connections): r for r in results}
        self.duel = {(d.server, d.endpoint, d.connections): d for d in duels}

    def rps(self, key: Key) -> float | None:
        found = self.result.get(key)
        return found.rps if found else None

    def twin(self, duel: HeadToHead) -> HeadToHead | None:
        """The duel of ``duel``'s reference with its twin: the method's error at that point."""
        twin = TWIN_OF.get(duel.reference)
        return self.duel.get((twin, duel.reference_endpoint, duel.connections)) if twin else None

    def relative(self, a: Key, b: Key) -> tuple[float, str] | None:
        """``a``'s req/s over ``b``'s, and how it was found: head to head when ``a`` was loaded against
        ``b``, or ``a`` and ``b`` each against the same reference (the ratio of their ratios); else from
        the sequential medians. None if not measured."""
        duel, base = self.duel.get(a), self.duel.get(b)
        if duel is not None and (duel.reference, duel.reference_endpoint) == b[:2]:
            twin = self.twin(duel)
            twin_text = f"; twin {twin.ratio:.3f}x" if twin else ""
            shown = (
                f"rounds {min(duel.ratios):.3f}-{max(duel.ratios):.3f}{twin_text}; per CPU-second "
                f"{duel.cpu_ratio:.3f}x, core {SERVER_CPU} busy {duel.servers_cpu_pct:.0f} %"
            )
            return duel.ratio, f"{duel.ratio:.3f}x head to head ({shown})"
        if (
            duel is not None
            and base is not None
            and (duel.reference, duel.reference_endpoint)
            == (
                base.reference,
                base.reference_endpoint,
            )
        ):
            value = duel.ratio / base.ratio
            against = SHORT.get(duel.reference, duel.reference)
            shown = f"{duel.ratio:.3f} ÷ {base.ratio:.3f} of {against}"
            return (
                value,
                f"{value:.2f}x head to head ({shown}; per CPU-second {duel.cpu_ratio / base.cpu_ratio:.2f}x)",
            )
        ra, rb = self.rps(a), self.rps(b)
        if ra is None or not rb:
            return None
        return ra / rb, f"{ra / rb:.2f}x ({ra:,.0f} ÷ {rb:,.0f} req/s)"

    def relative_cpu(self, a: Key, b: Key) -> float | None:
        """``relative``'s head-to-head ratio from each server's requests per CPU-second; None where
        ``relative`` has no head-to-head ratio."""
        duel, base = self.duel.get(a), self.duel.get(b)
        if duel is None:
            return None
        if (duel.reference, duel.reference_endpoint) == b[:2]:
            return duel.cpu_ratio
        if base is not None and (base.reference, base.reference_endpoint) == (
            duel.reference,
            duel.reference_endpoint,
        ):
            return duel.cpu_ratio / base.cpu_ratio
        return None


@dataclass
class TargetCheck:
    target: str
    connections: int | None
    shipped: str  # Phoenix with its request log on, FastAPI + uvicorn with its access log on
    shipped_ok: bool | None
    log_off: str  # both logs off ("-" where there is no such variant)
    log_off_ok: bool | None


def latest_soak(out: Path) -> dict[str, Any] | None:
    """The newest soak report (benches/soak.py) in ``out``, if any."""
    for path in sorted(out.glob("soak-*.json"), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            found: dict[str, Any] = json.loads(path.read_text())
            found["path"] = path.with_suffix(".md").name
            return found
    return None


def evaluate_targets(figures: Figures, args: argparse.Namespace) -> list[TargetCheck]:
    """The issue's targets for the selected groups, from this run; the soak target from the newest soak
    report. The throughput ratios come from the head-to-head rounds when there are any: in sequential
    rounds the machine's own drift is as large as the differences being judged."""

    def p99_check(a: Key, b: Key, bound: float) -> tuple[str, bool | None]:
        ra, rb = figures.result.get(a), figures.result.get(b)
        if ra is None or rb is None or not rb.p99_ms:
            return "-", None
        value = ra.p99_ms / rb.p99_ms
        return f"{value:.2f}x ({ra.p99_ms:.3f} ÷ {rb.p99_ms:.3f} ms)", value <= bound

    def throughput_check(a: Key, b: Key, bound: float, with_p99: bool) -> tuple[str, bool | None]:
        found = figures.relative(a, b)
        if found is None:
            return "-", None
        value, shown = found
        ra, rb = figures.result.get(a), figures.result.get(b)
        if with_p99 and ra and rb:
            shown += f"; p99 alone {ra.p99_ms:.3f} vs {rb.p99_ms:.3f} ms"
        return shown, value >= bound

    checks = []

    def add_throughput(
        target: str,
        bound: float,
        on: tuple[Pair, Pair],
        off: tuple[Pair, Pair] | None,
        with_p99: bool = False,
    ) -> None:
        """One row per connection count: ``on`` and ``off`` are (server, endpoint) pairs, a over b."""
        for c in args.connections:
            (a_on, b_on) = on
            shipped = throughput_check((*a_on, c), (*b_on, c), bound, with_p99)
            log_off: tuple[str, bool | None] = ("-", None)
            if off is not None:
                a_off, b_off = off
                log_off = throughput_check((*a_off, c), (*b_off, c), bound, with_p99)
            checks.append(TargetCheck(target, c, *shipped, *log_off))

    if "main" in args.only:
        add_throughput(
            f"/health ≥ {TARGET_CEILING_RATIO}x the ceiling, metrics on (req/s)",
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
                *p99_check((PHOENIX_ON, "/health", c), (CEILING, "/health", c), TARGET_P99_RATIO),
                *p99_check((PHOENIX_OFF, "/health", c), (CEILING, "/health", c), TARGET_P99_RATIO),
            )
        )
        add_throughput(
            f"/ready (cached) ≥ {TARGET_READY_RATIO}x /health (req/s)",
            TARGET_READY_RATIO,
            ((PHOENIX_ON, "/ready"), (PHOENIX_ON, "/health")),
            ((PHOENIX_OFF, "/ready"), (PHOENIX_OFF, "/health")),
        )
    if "probe" in args.only:
        add_throughput(
            f"probe port /health ≥ {TARGET_NGINX_RATIO}x nginx (req/s)",
            TARGET_NGINX_RATIO,
            ((PROBE, "/health"), (NGINX, "/health")),
            None,
            with_p99=True,
        )
        add_throughput(
            f"probe port /health ≥ {TARGET_BARE_HYPER_RATIO}x bare hyper (req/s)",
            TARGET_BARE_HYPER_RATIO,
            ((PROBE, "/health"), (BARE_HYPER, "/health")),
            ((PROBE_LOG_OFF, "/health"), (BARE_HYPER, "/health")),
        )
        add_throughput(
            f"bare hyper ≥ {TARGET_NGINX_RATIO}x nginx (req/s): the stack's own limit",
            TARGET_NGINX_RATIO,
            ((BARE_HYPER, "/health"), (NGINX, "/health")),
            None,
        )
        add_throughput(
            f"probe port /ready ≥ {TARGET_PROBE_READY_RATIO}x its /health (req/s)",
            TARGET_PROBE_READY_RATIO,
            ((PROBE, "/ready"), (PROBE, "/health")),
            None,
        )
        add_throughput(
            f"main port /health with the probe listener ≥ {TARGET_LISTENER_RATIO}x without (req/s)",
            TARGET_LISTENER_RATIO,
            ((PHOENIX_LISTENER, "/health"), (PHOENIX_ON, "/health")),
            None,
        )
    if "main" not in args.only:
        return checks
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


def ceiling_of(protocol: str) -> str:
    """The row a result's "ratio to ceiling" is taken against: the Granian ceiling of its protocol."""
    return CEILING_H2 if protocol == "h2c" else CEILING


def report(
    results: list[Result],
    duels: list[HeadToHead],
    servers: dict[str, Any],
    env: dict[str, str],
    args: argparse.Namespace,
    chart_name: str | None,
) -> str:
    figures = Figures(results, duels)

    def rps(server: str, endpoint: str, connections: int) -> float | None:
        return figures.rps((server, endpoint, connections))

    def relative(a: Pair, b: Pair, connections: int) -> str:
        found = figures.relative((*a, connections), (*b, connections))
        return f"{found[0]:.3f}" if found else "-"

    def relative_cpu(a: Pair, b: Pair, connections: int) -> str:
        found = figures.relative_cpu((*a, connections), (*b, connections))
        return f"{found:.3f}" if found else "-"

    quiet = f"up to {args.quiet_wait:g} s" if args.quiet_wait else "not at all (--quiet-wait 0)"
    lines = [
        f"# Phoenix HTTP benchmark, {env['date']}",
        "",
        f"`{env['command']}`",
        "",
        f"Groups: {', '.join(args.only)}. Servers on core {SERVER_CPU}, the load generator on core "
        f"{WRK_CPU}: `wrk -t1` for HTTP/1.1, `h2load -t1 -m1` for h2c (HTTP/2 cleartext, prior knowledge; "
        "one request in flight per connection, as with wrk). Per connection count a "
        f"{WARMUP_S} s warm-up, then the median of {args.rounds} rounds of {args.duration} s, taken in turns "
        "across the servers. "
        "Ratios compare servers within this run; h2c rows are compared with the h2c ceiling. CPU columns are "
        "% of one core during the rounds: the server's processes, the load generator, and everything else "
        "on the machine (other CPU % well above 0 means the numbers are disturbed; each round waits, "
        f"{quiet}, for the machine to be idle first; at c = 500 about 20-30 % shows for every Granian "
        "server alike: the kernel's loopback network work (softirq) charged to no process, not a "
        "disturbance). Bytes per response: headers and body as the client received them. Errors are wrk's "
        "socket errors (connect, read, write, timeout) and non-2xx/3xx answers, or h2load's failed "
        "requests, summed over the rounds.",
        "",
        "nginx (the physical reference): Debian's nginx-light, master and one worker pinned to core "
        f"{SERVER_CPU}, `return 200` with the ceiling's body (Phoenix's /health in shape and length) as "
        "`application/json`, access log off, keep-alive connections never closed "
        "([nginx_reference.conf](../nginx_reference.conf)). The probe port rows are Phoenix "
        "(`phoenix serve --probe-port`, request log on, as shipped) on its probe listener; the same "
        f'process\'s main port is the row "{PHOENIX_LISTENER}".',
        "",
        "| server | endpoint | protocol | connections | req/s | p50 ms | p99 ms | ratio to ceiling "
        "| server CPU % | load gen. CPU % | other CPU % | bytes/response | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.endpoint} | {r.protocol} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.3f} "
            f"| {r.p99_ms:.3f} | {ratio(r.rps, rps(ceiling_of(r.protocol), '/health', r.connections))} "
            f"| {r.server_cpu_pct:.0f} | {r.wrk_cpu_pct:.0f} | {r.other_cpu_pct:.0f} "
            f"| {r.bytes_per_response:.0f} | {r.errors} |"
        )
    if chart_name:
        lines += ["", f"![HTTP/1.1 req/s and p99 per server and connection count]({chart_name})"]

    if duels:
        lines += ["", "## Head to head", ""]
        lines += [
            "Each server below and its reference (the ceiling, nginx, or their h2c forms) loaded at the same "
            f"time, both servers sharing core {SERVER_CPU} and both load generators on core {WRK_CPU}, "
            f"{args.h2h_rounds} rounds of {args.duration} s per connection count, in turns. Whatever slows "
            "the shared machine during a round slows both alike, so their ratio holds still where the "
            "sequential rounds above swing by ±10 %; with both servers CPU-bound, each gets half the core "
            "and the req/s ratio is the ratio of their costs per request. A reference's twin (a second, "
            "identical instance) shows the method's own error. Per CPU-second: the same ratio from "
            "requests per second of each server's own CPU time. Core busy: both servers' CPU, in % of their "
            "core; well below 100 the two load generators, sharing the other core, set the pace (as they may "
            "against nginx and the probe listener, cheaper per request than wrk and h2load), the req/s ratio "
            "leans towards 1, and the per-CPU-second ratio is the one that compares the servers' costs. p99: "
            "each side's, under this shared load. The probe port's /ready and /health are each loaded "
            "against nginx and compared through it: loaded at once on the one listener, each load would get "
            "the same share of it whatever a request costs.",
            "",
            "| server | endpoint | protocol | connections | against | ÷ against (median) | rounds (min-max) "
            f"| per CPU-second | core {SERVER_CPU} busy % | req/s | against req/s | p99 ms "
            "| against p99 ms |",
            "|---|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for d in duels:
            lines.append(
                f"| {d.server} | {d.endpoint} | {d.protocol} | {d.connections} | {d.reference} "
                f"| {d.ratio:.3f} | {min(d.ratios):.3f}-{max(d.ratios):.3f} | {d.cpu_ratio:.3f} "
                f"| {d.servers_cpu_pct:.0f} "
                f"| {d.median('challenger', 'rps'):,.0f} | {d.median('reference', 'rps'):,.0f} "
                f"| {d.median('challenger', 'p99'):.3f} | {d.median('reference', 'p99'):.3f} |"
            )

    checks = evaluate_targets(figures, args)
    lines += ["", "## Targets", ""]
    lines += [
        "Phoenix as shipped (request log on) against FastAPI + uvicorn as shipped (access log on), the "
        "ceiling and nginx; the last two columns are the same with both logs off, where there is such a "
        "variant. Throughput ratios are head to head when those rounds ran (a ratio between two servers "
        "loaded against the same reference is then the ratio of their head-to-head ratios); p99 is of the "
        'medians above. "With the probe listener ≥ without" allows '
        f"{100 * (1 - TARGET_LISTENER_RATIO):.0f} % for the method's error: it is a ratio of two "
        "head-to-head ratios, each within about 1 % as the twins show. Results are judged on req/s, as "
        f"the issue states them; where core {SERVER_CPU} was well below 100 % busy the load generators set "
        "the pace (nginx and the probe listener cost less per request than wrk and h2load), so read the "
        "per-CPU-second ratio beside it.",
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
    if "main" in args.only:
        lines += [
            "Sequential medians.",
            "",
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
        metrics_rows = {
            "on": (PHOENIX_ON, PHOENIX_ON_METRICS_OFF),
            "off": (PHOENIX_OFF, PHOENIX_OFF_METRICS_OFF),
        }
        lines += [
            "",
            "Metrics: Phoenix /health with metrics on (the default) and off, each ÷ the ceiling, head to "
            "head (sequential medians where no head-to-head rounds ran), by req/s and by requests per "
            "CPU-second; on ÷ off is the ratio of the two: what recording the metrics costs.",
            "",
            "| connections | request log | metrics on ÷ ceiling | per CPU-second | metrics off ÷ ceiling "
            "| per CPU-second | metrics on ÷ off | per CPU-second |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for connections in args.connections:
            for state, (with_metrics, without) in metrics_rows.items():
                pairs = [
                    ((with_metrics, "/health"), (CEILING, "/health")),
                    ((without, "/health"), (CEILING, "/health")),
                    ((with_metrics, "/health"), (without, "/health")),
                ]
                cells = [
                    f"{relative(a, b, connections)} | {relative_cpu(a, b, connections)}" for a, b in pairs
                ]
                lines.append(f"| {connections} | {state} | " + " | ".join(cells) + " |")
    # The probe listener's and HTTP/2's comparisons side by side, as the Targets section judges them.
    columns: list[tuple[str, str, Pair, Pair]] = [
        ("probe", "probe /health ÷ nginx", (PROBE, "/health"), (NGINX, "/health")),
        ("probe", "probe /ready ÷ probe /health", (PROBE, "/ready"), (PROBE, "/health")),
        ("probe", "probe /health, request log off ÷ nginx", (PROBE_LOG_OFF, "/health"), (NGINX, "/health")),
        ("probe", "main port, listener on ÷ off", (PHOENIX_LISTENER, "/health"), (PHOENIX_ON, "/health")),
        ("probe", "nginx twin ÷ nginx", (NGINX_TWIN, "/health"), (NGINX, "/health")),
        ("h2", "Phoenix h2c ÷ ceiling h2c", (PHOENIX_H2, "/health"), (CEILING_H2, "/health")),
        ("h2", "probe h2c ÷ nginx h2c", (PROBE_H2, "/health"), (NGINX_H2, "/health")),
        ("h2", "nginx h2c twin ÷ nginx h2c", (NGINX_H2_TWIN, "/health"), (NGINX_H2, "/health")),
    ]
    columns = [column for column in columns if column[0] in args.only]
    if columns:
        lines += [
            *([""] if "main" in args.only else []),
            "Probe listener and HTTP/2: req/s ratios, head to head (through the common reference where "
            "both were loaded against it; sequential medians where no head-to-head rounds ran).",
            "",
            "| connections | " + " | ".join(title for _group, title, _a, _b in columns) + " |",
            "|---:|" + "---:|" * len(columns),
        ]
        for connections in args.connections:
            cells = [relative(a, b, connections) for _group, _title, a, b in columns]
            lines.append(f"| {connections} | " + " | ".join(cells) + " |")

    lines += ["", "## Memory (VmRSS of the worker processes, MiB)", ""]
    lines += [
        "Read when the server is up, before any load, then after each connection count's rounds; the "
        "maximum is over the readings before and after every run. The growth is after the last load minus "
        "before the first: a soak (`make bench-soak`) measures growth under steady load. One row per "
        "process: the probe listener lives in the process of the row named after its main port.",
        "",
    ]
    after_cols = [f"after c = {c}" for c in args.connections]
    lines += [
        "| server | before load | " + " | ".join(after_cols) + " | max | growth |",
        "|---|---:|" + "---:|" * len(after_cols) + "---:|---:|",
    ]
    for name, info in servers.items():
        afters = [info["rss_kb_after_connections"].get(str(c), 0) for c in args.connections]
        own = set(info["body_bytes"])  # the process's listeners that were measured
        peak = max([info["rss_kb_before"], *afters, *(r.rss_kb_max for r in results if r.server in own)])
        growth = info["rss_kb_after"] - info["rss_kb_before"]
        lines.append(
            f"| {name} | {info['rss_kb_before'] / 1024:.1f} | "
            + " | ".join(f"{kb / 1024:.1f}" for kb in afters)
            + f" | {peak / 1024:.1f} | {growth / 1024:+.1f} |"
        )

    lines += ["", "## Errors", ""]
    with_errors = [r for r in results if r.errors]
    retried = [
        f"- run once more after a failed run: {name} {endpoint} c = {connections} ({run['retried_after']})"
        for name, endpoint, connections, runs in [
            *((r.server, r.endpoint, r.connections, r.rounds) for r in results),
            *(
                (
                    f"{d.server} against {d.reference}",
                    d.endpoint,
                    d.connections,
                    [r["challenger"] for r in d.rounds],
                )
                for d in duels
            ),
        ]
        for run in runs
        if "retried_after" in run
    ]
    lines += retried
    if not with_errors:
        lines.append(
            "No socket errors or bad statuses at any connection count "
            f"({', '.join(map(str, args.connections))}); open-files limit (soft/hard) "
            f"{env.get('nofile', '-')}."
        )
    else:
        for r in with_errors:
            kinds = ", ".join(f"{kind} {n}" for kind, n in r.error_kinds.items() if n)
            lines.append(f"- {r.server} {r.endpoint} ({r.protocol}) c = {r.connections}: {kinds}")
        lines.append(f"- open-files limit (soft/hard): {env.get('nofile', '-')}")

    lines += machine_section(env)
    return "\n".join(lines) + "\n"


def chart(results: list[Result], env: dict[str, str], args: argparse.Namespace, path: Path) -> bool:
    """req/s (top row) and p99 (bottom row), one panel per connection count, one bar per HTTP/1.1 server
    and endpoint; written to ``path`` as PNG. False if matplotlib is not available or there is nothing to
    draw."""
    results = [r for r in results if r.protocol == "http/1.1"]
    if not results:
        return False
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
    # Room for each bar's label, and for the title and legend when there is one panel per row.
    panel_width = max(3.6, 0.42 * len(targets))
    fig, axes = plt.subplots(2, columns, figsize=(max(9.0, panel_width * columns + 1.2), 8.0), squeeze=False)
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
    legend_columns = min(3, len(handles))
    fig.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize=8, frameon=False)
    fig.suptitle(
        f"Phoenix HTTP/1.1 benchmark, {env['date']}: median of {args.rounds} x {args.duration} s rounds, "
        f"server on core {SERVER_CPU}, wrk -t1 on core {WRK_CPU}\n"
        f"{env['cpu_model']}, {env['nproc']} cores, Python {env['python']}, granian {env['granian']}, "
        f"commit {env['commit']}; req/s labels: k req/s and ratio to the ceiling (dashed line)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.03 + 0.025 * math.ceil(len(handles) / legend_columns), 1, 0.95))
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
        help="comma-separated connection counts, for wrk and h2load (default 1,50,500)",
    )
    parser.add_argument(
        "--h2h-rounds",
        type=int,
        default=5,
        help="head-to-head rounds per connection count against each reference (default 5; 0: none)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: [group.strip() for group in text.split(",")],
        default=GROUPS,
        help=f"comma-separated groups of rows to measure, of {','.join(GROUPS)} (default: all)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=QUIET_TIMEOUT_S,
        help=f"seconds to wait, at most, for an idle machine before each round (default {QUIET_TIMEOUT_S:g})",
    )
    parser.add_argument("--out", type=Path, default=BENCHES / "results", help="report directory")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or min(args.connections) < 1 or args.h2h_rounds < 0:
        parser.error("--duration, --rounds and --connections must be positive, --h2h-rounds not negative")
    if args.quiet_wait < 0:
        parser.error("--quiet-wait must not be negative")
    unknown = [group for group in args.only if group not in GROUPS]
    if unknown or not args.only:
        parser.error(f"--only takes groups of {', '.join(GROUPS)}, not {','.join(unknown) or 'none'}")
    args.only = [group for group in GROUPS if group in args.only]  # one order, whatever the command line's
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
    if "probe" in args.only or "h2" in args.only:
        ensure_apt("nginx", "nginx-light")
    if "h2" in args.only:
        ensure_apt("h2load", "nghttp2-client")
    with_fastapi = "main" in args.only and ensure_fastapi()
    with_chart = ensure_matplotlib()
    started = dt.datetime.now()
    env = run_env(started, nofile=nofile)
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-http-") as tmp:
        bare_hyper = build_bare_hyper() if "probe" in args.only else None
        specs = server_specs(Path(tmp), with_fastapi, bare_hyper)
        results, duels, servers = bench(specs, Path(tmp), args)
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
            | {
                "ratios": d.ratios,
                "cpu_ratios": d.cpu_ratios,
                "ratio": d.ratio,
                "cpu_ratio": d.cpu_ratio,
                "servers_cpu_pct": d.servers_cpu_pct,
            }
            for d in duels
        ],
    }
    save_report(stem, markdown, raw)
    if chart_name:
        log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
