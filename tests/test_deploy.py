"""The Kubernetes manifest stays in step with the endpoints and defaults it relies on."""

from __future__ import annotations

from typing import Any

import yaml

from phoenix.config import DEFAULTS, KEYS

from .conftest import ROOT

MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def pod_spec() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (phoenix,) = pod_spec()["containers"]
    spec: dict[str, Any] = phoenix
    return spec


def env() -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container()["env"]}


def container_port(name: str) -> int:
    (port,) = [p["containerPort"] for p in container()["ports"] if p["name"] == name]
    assert isinstance(port, int)
    return port


def grpc_readiness_variant() -> dict[str, Any]:
    """The commented gRPC readiness probe, parsed as Kubernetes would once it is uncommented."""
    lines = [line.strip() for line in MANIFEST.read_text().splitlines()]
    start = lines.index("# readinessProbe:")
    block = [lines[start][2:]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    probe: dict[str, Any] = yaml.safe_load("\n".join(block))["readinessProbe"]
    return probe


def test_each_probe_uses_its_endpoint() -> None:
    spec = container()
    assert spec["startupProbe"]["httpGet"]["path"] == "/startup"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/live"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_every_probe_asks_the_probe_port() -> None:
    for probe in PROBES:
        assert container()[probe]["httpGet"]["port"] == "probes", probe
    settings = env()
    assert int(settings["PHOENIX_PROBE_PORT"]) == container_port("probes")
    # The kubelet probes the pod's IP: a listener on loopback only would fail every probe.
    assert settings["PHOENIX_PROBE_HOST"] == "0.0.0.0"
    assert container_port("probes") != container_port("http")


def test_the_grpc_variant_asks_the_probe_port_for_readiness() -> None:
    variant = grpc_readiness_variant()
    assert variant["grpc"] == {"port": container_port("probes"), "service": ""}
    http = container()["readinessProbe"]
    # Everything but the way of asking is the HTTP probe's.
    assert {k: v for k, v in variant.items() if k != "grpc"} == {
        k: v for k, v in http.items() if k != "httpGet"
    }


def test_probe_timeouts_outlast_a_check_round() -> None:
    round_s = DEFAULTS.check_timeout_ms / 1000
    for probe in PROBES:
        assert container()[probe]["timeoutSeconds"] > round_s


def test_a_wedged_event_loop_leaves_the_service_before_a_restart() -> None:
    """The latest the readiness probe can take the pod out of the Service, once its event loop stops,
    comes before the earliest the liveness probe can restart it."""
    spec = container()
    readiness, liveness = spec["readinessProbe"], spec["livenessProbe"]
    out_of_service_s = (
        DEFAULTS.ready_stale_ms / 1000
        + readiness["periodSeconds"] * readiness["failureThreshold"]
        + readiness["timeoutSeconds"]
    )
    restarted_s = DEFAULTS.live_stale_ms / 1000 + liveness["periodSeconds"] * (
        liveness["failureThreshold"] - 1
    )
    assert out_of_service_s < restarted_s


def test_readiness_notices_draining_before_the_drain_ends() -> None:
    spec = container()
    drain_s = int(env()["PHOENIX_SHUTDOWN_DRAIN_MS"]) / 1000
    readiness = spec["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain_s
    assert pod_spec()["terminationGracePeriodSeconds"] > drain_s


def test_port_and_settings_are_real_phoenix_settings() -> None:
    settings = env()
    keys = {key.env_var for key in KEYS}
    assert set(settings) <= keys
    assert int(settings["PHOENIX_PORT"]) == container_port("http")
    assert settings["PHOENIX_DETAILS"] == "token", "served beyond loopback: details behind the token"


def test_the_pod_asks_to_be_scraped_on_the_probe_port() -> None:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_port("probes")
    assert annotations["prometheus.io/path"] == "/metrics"
