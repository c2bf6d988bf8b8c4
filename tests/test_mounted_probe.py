"""End to end: Phoenix mounted in someone else's FastAPI app (``app.mount("/probe", kernel.asgi())``),
with the kernel's own probe port, served by uvicorn or Granian's ASGI interface. The probe port keeps
answering while the app's own port is saturated by CPU-bound requests, and the kernel starts from the
host's start-up hook or from the mount's first request."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, free_port, phoenix_env, wait_until, wait_until_serving

# wrk's load on the app's CPU-bound route: bounded in time, a few connections.
LOAD_DURATION = "5s"
LOAD_CONNECTIONS = 4
PROBE_PATHS = ("/health", "/ready")


def host_command(host: str, port: int) -> list[str]:
    if host == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--factory", "tests.apps:fastapi_app",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "tests.apps:fastapi_app",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


@dataclass
class Host:
    """The host app on its own port, and the mounted kernel's probe port."""

    app: Server
    probe: Server


@pytest.fixture
def serve_host(tmp_path: Path) -> Iterator[Any]:
    """``serve_host("uvicorn" | "granian", start_hook=...)`` starts tests.apps:fastapi_app and returns a
    :class:`Host` once the app's own route answers (the probe port may not listen yet)."""
    hosts: list[Host] = []

    def start(host: str, *, start_hook: bool) -> Host:
        port, probe_port = free_port(), free_port()
        log_path = tmp_path / f"{host}-{port}.log"
        log = log_path.open("wb")
        env = phoenix_env(PHOENIX_TEST_PROBE_PORT=str(probe_port))
        if start_hook:
            env["PHOENIX_TEST_START_HOOK"] = "1"
        proc = subprocess.Popen(
            host_command(host, port), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip
        app = Server(proc, port, log_path, tmp_path / "runs", tmp_path, log)
        started = Host(app, app.on_port(probe_port))
        hosts.append(started)
        wait_until_serving(app, "/")
        return started

    yield start
    for host in hosts:
        host.app.stop(timeout=10)
        host.app._log.close()


def probe_port_answers(host: Host) -> bool:
    try:
        return host.probe.request("/health", timeout=5.0).status == 200
    except ConnectionRefusedError:
        return False


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_the_hosts_start_up_hook_starts_the_listener(serve_host: Any, server: str) -> None:
    host: Host = serve_host(server, start_hook=True)
    # Nothing has asked the mount anything: the app's own hook called kernel.start().
    wait_until(lambda: probe_port_answers(host), what="the probe port to answer", server=host.app)
    ready = host.probe.request("/ready")
    assert ready.status == 200, ready.body
    assert set(ready.json()["subsystems"]) == {"ping", "db"}
    assert host.app.request("/probe/ready").status == 200


def test_the_mounts_first_request_starts_the_listener(serve_host: Any) -> None:
    host: Host = serve_host("uvicorn", start_hook=False)
    assert host.app.request("/").status == 200
    assert not probe_port_answers(host), "nothing has started the kernel yet"
    assert host.app.request("/probe/health").status == 200
    wait_until(lambda: probe_port_answers(host), what="the probe port to answer", server=host.app)


@dataclass
class ProbeClient:
    """Asks ``/health`` and ``/ready`` in turn, one fresh connection each, as a kubelet does, until
    told to stop; records each answer's latency, or its failure."""

    server: Server
    prefix: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            path = self.prefix + PROBE_PATHS[i % len(PROBE_PATHS)]
            i += 1
            began = time.perf_counter()
            try:
                status = self.server.request(path, timeout=30.0).status
            except OSError as error:
                self.failures.append(f"{path}: {error!r}")
                continue
            if status != 200:
                self.failures.append(f"{path}: {status}")
                continue
            self.latencies_ms.append((time.perf_counter() - began) * 1000)


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def test_the_probe_port_answers_while_the_app_is_saturated(serve_host: Any, wrk: str) -> None:
    host: Host = serve_host("uvicorn", start_hook=True)
    wait_until(lambda: probe_port_answers(host), what="the probe port to answer", server=host.app)
    assert host.app.request("/cpu").status == 200
    # Two equivalent probe clients, one on the probe port, one through the mount on the app's port.
    on_probe_port = ProbeClient(host.probe)
    through_app = ProbeClient(host.app, prefix="/probe")
    threads = [threading.Thread(target=c.run) for c in (on_probe_port, through_app)]
    load = subprocess.Popen(
        [wrk, "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{LOAD_DURATION}", f"http://127.0.0.1:{host.app.port}/cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        report = load.communicate(timeout=120)[0].decode()
    finally:
        for client in (on_probe_port, through_app):
            client.stop.set()
        for thread in threads:
            thread.join(60)
    assert load.returncode == 0, report
    assert "Requests/sec" in report, report

    assert on_probe_port.failures == []
    assert on_probe_port.latencies_ms, "the probe port answered nothing"
    # The saturated app's port answers the same client far fewer times in the same window.
    assert len(on_probe_port.latencies_ms) > len(through_app.latencies_ms), (
        len(on_probe_port.latencies_ms),
        len(through_app.latencies_ms),
    )
    assert host.app.proc.poll() is None, host.app.logs()
    for name, client in (("probe port", on_probe_port), ("app port /probe", through_app)):
        values = client.latencies_ms
        if len(values) >= 2:
            print(
                f"{name}: {len(values)} answers under load, p50 {percentile(values, 50):.2f} ms, "
                f"p99 {percentile(values, 99):.2f} ms, failures {len(client.failures)}"
            )
    print(report)
