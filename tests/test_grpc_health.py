"""End to end: ``grpc.health.v1.Health`` on the probe port, asked by the grpcio client as Kubernetes'
native ``grpc:`` probe asks it. Service "" is the kernel's readiness, a subsystem's name that
subsystem; ``Watch`` streams changes; HTTP/1.1 and HTTP/2 requests share the port."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import CONDITION_TIMEOUT_S, Server, serve_with_probe_port, wait_until

# Bounds each call; never a claim about how long one takes.
CALL_TIMEOUT_S = 10.0
ServingStatus = health_pb2.HealthCheckResponse.ServingStatus


@contextlib.contextmanager
def health_client(probe: Server) -> Iterator[Any]:
    # No proxy: the probe port is on loopback, whatever the environment says.
    channel = grpc.insecure_channel(f"127.0.0.1:{probe.port}", options=[("grpc.enable_http_proxy", 0)])
    try:
        yield health_pb2_grpc.HealthStub(channel)
    finally:
        channel.close()


def check(stub: Any, service: str) -> str:
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
    name: str = ServingStatus.Name(reply.status)
    return name


def wait_for_status(stub: Any, service: str, status: str, server: Server) -> None:
    wait_until(lambda: check(stub, service) == status, what=f"Check({service!r}) = {status}", server=server)


def set_metric(path: Path, value: float) -> None:
    path.write_text(str(value))


def serve_background(serve: Any, tmp_path: Path, *args: str, **env: str) -> tuple[Server, Server, Path]:
    """tests.apps:background (one check every 50 ms, reading its metric from a file) with a probe
    port, its check passing."""
    metric = tmp_path / "metric"
    set_metric(metric, 1.0)
    main, probe = serve_with_probe_port(
        serve, "--app", "tests.apps:background", *args, env={"PHOENIX_TEST_METRIC": str(metric), **env}
    )
    return main, probe, metric


def test_check_follows_the_kernels_readiness(serve: Any, tmp_path: Path) -> None:
    main, probe, metric = serve_background(serve, tmp_path)
    with health_client(probe) as stub:
        wait_for_status(stub, "", "SERVING", main)
        assert check(stub, "bg") == "SERVING"
        set_metric(metric, 0.1)
        wait_for_status(stub, "", "NOT_SERVING", main)
        assert check(stub, "bg") == "NOT_SERVING"
        assert probe.request("/ready").status == 503
        set_metric(metric, 1.0)
        wait_for_status(stub, "", "SERVING", main)
        assert check(stub, "bg") == "SERVING"


def test_each_subsystem_is_a_service(serve: Any) -> None:
    _, probe = serve_with_probe_port(serve, "--app", "tests.apps:probes")
    with health_client(probe) as stub:
        assert check(stub, "") == "NOT_SERVING"  # queue fails
        assert check(stub, "db") == "SERVING"
        assert check(stub, "cache") == "SERVING"  # warns: still ready
        assert check(stub, "queue") == "NOT_SERVING"
        for unknown in ("nope", "db/", "DB", "pid"):
            with pytest.raises(grpc.RpcError) as error:
                check(stub, unknown)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND, unknown


def test_not_serving_while_draining(serve: Any) -> None:
    main, probe = serve_with_probe_port(
        serve, "--app", "tests.apps:empty", env={"PHOENIX_SHUTDOWN_DRAIN_MS": "60000"}
    )
    with health_client(probe) as stub:
        assert check(stub, "") == "SERVING"
        main.proc.send_signal(signal.SIGTERM)
        wait_for_status(stub, "", "NOT_SERVING", main)
        assert probe.request("/ready").json() == {"status": "draining"}
    main.proc.send_signal(signal.SIGTERM)  # the second signal ends the 60 s drain
    assert main.exit_status() == 0, main.logs()


def test_watch_streams_the_status_then_each_change(serve: Any, tmp_path: Path) -> None:
    main, probe, metric = serve_background(serve, tmp_path)
    with health_client(probe) as stub:
        wait_for_status(stub, "", "SERVING", main)
        # The deadline bounds the whole stream: each next() waits for one message.
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=2 * CONDITION_TIMEOUT_S)
        try:
            assert ServingStatus.Name(next(stream).status) == "SERVING"
            set_metric(metric, 0.1)
            assert ServingStatus.Name(next(stream).status) == "NOT_SERVING"
            set_metric(metric, 1.0)
            assert ServingStatus.Name(next(stream).status) == "SERVING"
        finally:
            stream.cancel()


def test_watching_an_unknown_service_says_so(serve: Any) -> None:
    _, probe = serve_with_probe_port(serve, "--app", "tests.apps:probes")
    with health_client(probe) as stub:
        stream = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=CONDITION_TIMEOUT_S)
        try:
            assert ServingStatus.Name(next(stream).status) == "SERVICE_UNKNOWN"
        finally:
            stream.cancel()


def test_http1_http2_and_grpc_share_the_probe_port(serve: Any, tmp_path: Path) -> None:
    main, probe, metric = serve_background(serve, tmp_path)
    with (
        health_client(probe) as stub,
        httpx.Client(http1=False, http2=True, base_url=f"http://127.0.0.1:{probe.port}") as h2,
    ):
        wait_for_status(stub, "", "SERVING", main)
        # A Watch stream stays open while plain HTTP requests come and go on the same port.
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=2 * CONDITION_TIMEOUT_S)
        try:
            assert ServingStatus.Name(next(stream).status) == "SERVING"
            for _ in range(3):
                assert probe.request("/health").status == 200
                ready = h2.get("/ready")
                assert (ready.http_version, ready.status_code) == ("HTTP/2", 200)
                assert check(stub, "bg") == "SERVING"
            set_metric(metric, 0.1)
            assert ServingStatus.Name(next(stream).status) == "NOT_SERVING"
            assert probe.request("/ready").status == 503
            assert h2.get("/ready").status_code == 503
        finally:
            stream.cancel()
