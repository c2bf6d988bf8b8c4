"""The Kubernetes manifest stays in step with the endpoints and defaults it relies on."""

from __future__ import annotations

from typing import Any

import yaml

from phoenix.config import DEFAULTS, KEYS

from .conftest import ROOT


def pod_spec() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (phoenix,) = pod_spec()["containers"]
    spec: dict[str, Any] = phoenix
    return spec


def test_each_probe_uses_its_endpoint() -> None:
    spec = container()
    assert spec["startupProbe"]["httpGet"]["path"] == "/startup"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/live"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_probe_timeouts_outlast_a_check_round() -> None:
    round_s = DEFAULTS.check_timeout_ms / 1000
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container()[probe]["timeoutSeconds"] > round_s


def test_readiness_notices_draining_before_the_drain_ends() -> None:
    spec = container()
    env = {e["name"]: e.get("value") for e in spec["env"]}
    drain_s = int(env["PHOENIX_SHUTDOWN_DRAIN_MS"]) / 1000
    readiness = spec["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain_s
    assert pod_spec()["terminationGracePeriodSeconds"] > drain_s


def test_port_and_settings_are_real_phoenix_settings() -> None:
    spec = container()
    env = {e["name"]: e.get("value") for e in spec["env"]}
    keys = {key.env_var for key in KEYS}
    assert set(env) <= keys
    assert int(env["PHOENIX_PORT"]) == spec["ports"][0]["containerPort"]
    assert env["PHOENIX_DETAILS"] == "token", "served beyond loopback: details behind the token"
