"""The training run of profile-guided optimisation (PGO): the workload `make wheel` and `make develop-pgo`
optimise the core for.

    python benches/pgo_train.py --phoenix VENV/bin/phoenix --profiles DIR [--seconds N]

``VENV`` holds a core built with ``-Cprofile-generate=DIR``. This serves the default kernel with it, a
main port and a probe port, and loads both as `make bench-http` does (wrk and h2load, pinned cores), most
of all the probe port's ``/health`` at 500 connections, the answer Phoenix exists to give fast; then
``/ready``, ``/live``, the other routes and errors, h2c and gRPC, so that no path users meet is left
untrained, which the compiler would take for cold code and optimise for size. The server is then stopped
with SIGTERM, so that each of its processes writes its profile (LLVM's runtime writes it at exit), and
the run fails unless DIR holds them. ``--seconds N`` runs each load for at most N seconds: the same
paths in a shorter run, for tests of the build.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from http_harness import (
    HOST,
    ListenerSpec,
    ServerSpec,
    ensure_apt,
    load,
    log,
    prepare_load_run,
    running,
)

MAIN = "phoenix main port"
PROBE = "phoenix probe port"
PROBE_H2 = "phoenix probe port (h2c)"
# (listener, endpoint, connections, seconds), loaded by wrk or, over h2c, h2load: the probe port's /health
# weighs most, as it should.
LOAD = [
    (PROBE, "/health", 500, 8),
    (PROBE, "/health", 50, 3),
    (PROBE, "/health", 1, 1),
    (PROBE, "/ready", 50, 3),
    (PROBE, "/ready", 500, 2),
    (PROBE, "/live", 50, 1),
    (PROBE, "/startup", 50, 1),
    (PROBE, "/ready/plastic_ltm", 50, 1),
    (PROBE, "/ready?verbose", 50, 1),
    (PROBE, "/metrics", 10, 1),
    (PROBE, "/no-such-route", 50, 1),
    (MAIN, "/health", 50, 3),
    (MAIN, "/ready", 50, 2),
    (MAIN, "/live", 50, 1),
    (MAIN, "/metrics", 10, 1),
    (MAIN, "/no-such-route", 50, 1),
    (PROBE_H2, "/health", 50, 2),
    (PROBE_H2, "/ready", 50, 1),
]
GRPC_CHECKS = 2000
PORTS = ["--port", "{port}", "--probe-port", "{probe_port}"]
SPAWN_WORKERS = 'import multiprocessing\n\nmultiprocessing.set_start_method("spawn")\n'
CONNECTIONS = max(connections for _listener, _endpoint, connections, _seconds in LOAD)


def grpc_checks(port: int) -> None:
    """``Check`` for the kernel and each subsystem, and one ``Watch``, as Kubernetes' grpc probe asks."""
    with grpc.insecure_channel(f"{HOST}:{port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        # Typed Any: the stubs' types declare the methods on the servicer only.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        services = ["", "plastic_ltm", "triune_conscience", "world_model"]
        for i in range(GRPC_CHECKS):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=services[i % len(services)]), timeout=5)
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError(f"gRPC Check answered {answer.status}")
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        next(watch)
        watch.cancel()


def train(phoenix: Path, profiles: Path, most_seconds: int | None) -> None:
    prepare_load_run(CONNECTIONS)
    ensure_apt("h2load", "nghttp2-client")
    with tempfile.TemporaryDirectory(prefix="phoenix-pgo-") as tmp:
        workdir = Path(tmp)
        # LLVM's runtime writes a process's profile from an atexit handler, which a forked worker never
        # runs (multiprocessing ends it with os._exit): the server starts its workers by spawning, as
        # Granian does by default from Python 3.14 on, and a spawned worker ends with a normal exit.
        (workdir / "sitecustomize.py").write_text(SPAWN_WORKERS)
        spec = ServerSpec(
            MAIN,
            [str(phoenix), "serve", "--data-dir", str(workdir / "data"), *PORTS],
            ["/health", "/ready"],
            # The request log on, as shipped; no drain, so that the stop is prompt.
            env={"PHOENIX_REQUEST_LOG": "true", "PHOENIX_SHUTDOWN_DRAIN_MS": "0", "PYTHONPATH": tmp},
            cwd=workdir,
            more_listeners=[
                ListenerSpec(PROBE, ["/health", "/ready"], "probe", "probe_port"),
                ListenerSpec(PROBE_H2, ["/health"], "h2", "probe_port", http2=True),
            ],
        )
        with running(spec, workdir) as server:
            server.wait_ready()
            listeners = {listener.name: listener for listener in server.listeners}
            for name, endpoint, connections, seconds in LOAD:
                load(listeners[name], endpoint, connections, min(seconds, most_seconds or seconds))
            grpc_checks(listeners[PROBE].port)
            server.check_alive()
            log("training load done; stopping the server so that it writes its profiles")
        if server.proc.returncode != 0:
            raise RuntimeError(f"phoenix serve exited with {server.proc.returncode}:\n{server.log_tail()}")
    written = sorted(profiles.glob("*.profraw"))
    if not written:
        raise RuntimeError(
            f"no profile in {profiles}: was {phoenix} built with -Cprofile-generate={profiles}?"
        )
    log(f"{len(written)} profiles in {profiles}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--phoenix", type=Path, required=True, help="the instrumented build's phoenix command"
    )
    parser.add_argument("--profiles", type=Path, required=True, help="the -Cprofile-generate directory")
    parser.add_argument("--seconds", type=int, help="the longest any load runs (default: each its own)")
    args = parser.parse_args(argv)
    train(args.phoenix, args.profiles, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
