"""The deploy examples stay in step with the endpoints, defaults and settings they rely on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from phoenix.cli import load_kernel
from phoenix.config import DEFAULTS, KEYS, load_settings

from .conftest import ROOT

MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
CHECKS_EXAMPLE = ROOT / "deploy" / "phoenix.toml"
EXAMPLE_SECRETS = {"DB_PASSWORD": "db-pw-5e2a", "REDIS_PASSWORD": "redis-pw-91c0"}
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


# --- deploy/phoenix.toml: a web service's dependency checks ----------------------------------------------


def test_the_checks_example_covers_a_typical_web_service() -> None:
    settings = load_settings(env=EXAMPLE_SECRETS, config_file=CHECKS_EXAMPLE)

    kinds = {check.name: check.kind for check in settings.checks}
    assert sorted(kinds.values()) == ["disk", "http", "memory", "postgres", "redis"]
    settings_of = {check.kind: check.settings for check in settings.checks}
    # The secrets come from the environment, not the file.
    assert "${DB_PASSWORD}" in CHECKS_EXAMPLE.read_text()
    assert ":db-pw-5e2a@" in settings_of["postgres"]["dsn"]
    assert ":redis-pw-91c0@" in settings_of["redis"]["url"]
    assert settings.explicit == frozenset(), "the server's settings come from the manifest"


def test_the_disk_check_watches_the_manifests_data_volume() -> None:
    settings = load_settings(env=EXAMPLE_SECRETS, config_file=CHECKS_EXAMPLE)

    (disk,) = [check for check in settings.checks if check.kind == "disk"]
    (mount,) = container()["volumeMounts"]
    assert disk.settings["path"] == mount["mountPath"]


def test_the_checks_example_builds_a_kernel(tmp_path: Path) -> None:
    """Every key of the example passes the core's validation, through the path `phoenix serve` takes."""
    settings = load_settings(cli={"app": "tests.apps:empty"}, env=EXAMPLE_SECRETS, config_file=CHECKS_EXAMPLE)
    # The data volume exists in the pod only (a disk check's path must exist): a directory stands in.
    checks = tuple(
        dataclasses.replace(check, settings={**check.settings, "path": str(tmp_path)})
        if check.kind == "disk"
        else check
        for check in settings.checks
    )

    kernel = load_kernel(dataclasses.replace(settings, checks=checks))

    assert kernel.subsystems == [check.name for check in settings.checks]
