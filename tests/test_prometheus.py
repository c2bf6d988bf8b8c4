"""A real Prometheus (Debian's package) scraping real Phoenix servers on loopback every second, asked
through its HTTP API: `up`, `phoenix_ready`, a failing check, quantiles from the histograms, a fleet of
three; the Kubernetes scrape job of deploy/prometheus/ run by Prometheus itself; and deploy/prometheus/
in step with Phoenix's series and deploy/kubernetes.yaml. (The alert rules' own tests run with
`promtool test rules`, in `make test-rules`.)"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from .conftest import ROOT, Server, free_port, serve_with_probe_port, wait_until

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
SCRAPE_KUBERNETES = PROMETHEUS_DIR / "scrape-kubernetes.yml"
SERVICEMONITOR = PROMETHEUS_DIR / "servicemonitor.yaml"
ALERTS = PROMETHEUS_DIR / "phoenix-alerts.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes.yaml"
# Only bounds the waits: a series needs a scrape or two (every second), a rate two samples, and the
# machine may be busy.
PROMETHEUS_TIMEOUT_S = 120.0
SCRAPE_EVERY_SECOND = {"scrape_interval": "1s", "scrape_timeout": "1s"}
# How pod discovery names a pod's prometheus.io/* annotations.
ANNOTATION = "__meta_kubernetes_pod_annotation_prometheus_io_"


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def api(self, endpoint: str, **params: str) -> Any:
        status, body = self.get(f"/api/v1/{endpoint}?{urlencode(params)}")
        answer = json.loads(body)
        assert (status, answer["status"]) == (200, "success"), (endpoint, params, answer)
        return answer["data"]

    def query(self, promql: str, **params: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` answers now (or at ``time=``)."""
        data = self.api("query", query=promql, **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, promql: str, **params: str) -> float | None:
        """The value of ``promql``'s one sample, or None when it answers none."""
        result = self.query(promql, **params)
        if not result:
            return None
        assert len(result) == 1, (promql, result)
        return float(result[0]["value"][1])

    def wait(
        self,
        promql: str,
        wanted: Callable[[float], bool],
        what: str,
        meanwhile: Callable[[], object] = lambda: None,
    ) -> float:
        """Queries ``promql`` until its value is ``wanted`` (doing ``meanwhile`` before each query),
        and returns that value."""
        last: list[float | None] = [None]

        def answer() -> tuple[float] | None:
            meanwhile()
            value = last[0] = self.value(promql)
            return (value,) if value is not None and wanted(value) else None

        try:
            return wait_until(answer, PROMETHEUS_TIMEOUT_S, what=f"{what}: {promql}")[0]
        except AssertionError as failure:
            raise AssertionError(f"{failure}; it last answered {last[0]}\n{self.logs()}") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()


StartPrometheus = Callable[[list[dict[str, Any]]], Prometheus]


@pytest.fixture
def start_prometheus(prometheus_command: str, tmp_path: Path) -> Iterator[StartPrometheus]:
    """``start_prometheus(scrape_configs)`` runs Prometheus on a free loopback port with those jobs, a
    config and a storage directory of its own (never the Debian service), and stops it after the test."""
    started: list[Prometheus] = []

    def start(scrape_configs: list[dict[str, Any]]) -> Prometheus:
        port = free_port()
        config = tmp_path / f"prometheus-{port}.yml"
        config.write_text(
            yaml.safe_dump({"global": SCRAPE_EVERY_SECOND, "scrape_configs": scrape_configs}, sort_keys=False)
        )
        log_path = tmp_path / f"prometheus-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    prometheus_command,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / f'prometheus-{port}-data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                start_new_session=True,
            )
        prometheus = Prometheus(proc, port, log_path)
        started.append(prometheus)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{prometheus.logs()}")
            with contextlib.suppress(OSError):
                return prometheus.get("/-/ready")[0] == 200
            return False

        wait_until(ready, PROMETHEUS_TIMEOUT_S, what="Prometheus to start")
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


def phoenix_job(*servers: Server) -> dict[str, Any]:
    """A scrape job for ``servers``, every second."""
    return {
        "job_name": "phoenix",
        **SCRAPE_EVERY_SECOND,
        "static_configs": [{"targets": [f"127.0.0.1:{server.port}" for server in servers]}],
    }


def is_one(value: float) -> bool:
    return value == 1


# -- a real Prometheus scraping Phoenix ------------------------------------------------------------------


def test_prometheus_scrapes_a_ready_phoenix(serve: Any, start_prometheus: StartPrometheus) -> None:
    server = serve("--app", "tests.apps:flagged")
    prometheus = start_prometheus([phoenix_job(server)])

    def kubelet() -> None:
        # phoenix_ready is what /ready's newest round said: in a pod, the readiness probe asks it.
        assert server.request("/ready").status == 200

    prometheus.wait('up{job="phoenix"}', is_one, "the scrape to succeed")
    prometheus.wait("phoenix_ready", is_one, "Phoenix ready", meanwhile=kubelet)
    assert prometheus.value(f'phoenix_build_info{{instance="127.0.0.1:{server.port}"}}') == 1


def test_quantiles_come_from_the_histograms(serve: Any, start_prometheus: StartPrometheus) -> None:
    server = serve("--app", "tests.apps:flagged")
    prometheus = start_prometheus([phoenix_job(server)])

    def traffic() -> None:
        for target in ("/health", "/ready", "/live") * 10:
            server.request(target)

    def quantile(q: float, series: str, by: str = "le") -> str:
        return f"histogram_quantile({q}, sum by ({by}) (rate({series}_bucket[30s])))"

    def is_latency(value: float) -> bool:
        return math.isfinite(value) and value > 0

    requests = "phoenix_http_request_duration_seconds"
    prometheus.wait(quantile(0.99, requests), is_latency, "a P99 of requests", meanwhile=traffic)
    at = str(time.time())  # the three quantiles of one moment
    p50, p95, p99 = (prometheus.value(quantile(q, requests), time=at) for q in (0.5, 0.95, 0.99))
    assert p50 is not None
    assert p95 is not None
    assert p99 is not None
    assert 0 < p50 <= p95 <= p99
    by_route = prometheus.query(quantile(0.99, requests, "le, route"), time=at)
    assert {"/health", "/ready", "/live"} <= {
        r["metric"]["route"] for r in by_route if is_latency(float(r["value"][1]))
    }
    checks = "phoenix_check_duration_seconds"
    prometheus.wait(quantile(0.99, checks, "le, check"), is_latency, "a P99 of the check", meanwhile=traffic)


def test_a_check_made_to_fail_shows_in_prometheus(
    serve: Any, start_prometheus: StartPrometheus, tmp_path: Path
) -> None:
    flag = tmp_path / "unready"
    server = serve("--app", "tests.apps:flagged", env={"PHOENIX_TEST_FLAG": str(flag)})
    prometheus = start_prometheus([phoenix_job(server)])

    def kubelet() -> None:
        server.request("/ready")

    failing = 'phoenix_check_status{check="flag",status="fail"}'
    prometheus.wait("phoenix_ready", is_one, "Phoenix ready", meanwhile=kubelet)
    assert prometheus.value(failing) == 0
    flag.touch()
    prometheus.wait(failing, is_one, "the check to fail", meanwhile=kubelet)
    prometheus.wait("phoenix_ready", lambda v: v == 0, "Phoenix not ready", meanwhile=kubelet)
    runs = 'increase(phoenix_check_runs_total{check="flag",result="fail"}[1m])'
    prometheus.wait(runs, lambda v: v > 0, "failed runs counted", meanwhile=kubelet)


def test_a_fleet_of_three_in_one_scrape_config(
    serve: Any, start_prometheus: StartPrometheus, tmp_path: Path
) -> None:
    flags = [tmp_path / f"unready-{i}" for i in range(3)]
    servers = [serve("--app", "tests.apps:flagged", env={"PHOENIX_TEST_FLAG": str(flag)}) for flag in flags]
    prometheus = start_prometheus([phoenix_job(*servers)])

    def kubelet() -> None:
        for server in servers:
            server.request("/ready")

    prometheus.wait('count(up{job="phoenix"} == 1)', lambda v: v == 3, "three instances up")
    prometheus.wait("sum(phoenix_ready)", lambda v: v == 3, "three instances ready", meanwhile=kubelet)
    flags[1].touch()
    prometheus.wait("sum(phoenix_ready)", lambda v: v == 2, "one instance unready", meanwhile=kubelet)
    (unready,) = prometheus.query("phoenix_ready == 0")
    assert unready["metric"]["instance"] == f"127.0.0.1:{servers[1].port}"


# -- deploy/prometheus/ -----------------------------------------------------------------------------------


def test_the_kubernetes_scrape_job_scrapes_annotated_pods_on_their_port(
    serve: Any, start_prometheus: StartPrometheus, tmp_path: Path
) -> None:
    """The job of scrape-kubernetes.yml, run by Prometheus with its relabelling as written; only the
    discovery is replaced by what pod discovery would find (Debian builds Prometheus without
    Kubernetes discovery), and the token file and interval by the test's."""
    main, probe = serve_with_probe_port(serve, "--app", "tests.apps:guarded")  # details = "token"
    (job,) = yaml.safe_load(SCRAPE_KUBERNETES.read_text())["scrape_configs"]
    token = tmp_path / "token"
    token.write_text("s3cret")
    job["authorization"]["credentials_file"] = str(token)
    job.update(SCRAPE_EVERY_SECOND)
    del job["kubernetes_sd_configs"]
    pod = {
        "__meta_kubernetes_namespace": "shop",
        "__meta_kubernetes_pod_name": "phoenix-7d9f",
        "__meta_kubernetes_pod_label_app": "phoenix",
        "__meta_kubernetes_pod_phase": "Running",
        f"{ANNOTATION}scrape": "true",
        f"{ANNOTATION}port": str(probe.port),
        f"{ANNOTATION}path": "/metrics",
    }
    others = [  # pods the job must leave alone
        {**pod, "__meta_kubernetes_pod_name": "opted-out", f"{ANNOTATION}scrape": "false"},
        {**pod, "__meta_kubernetes_pod_name": "not-phoenix", "__meta_kubernetes_pod_label_app": "shop"},
        {**pod, "__meta_kubernetes_pod_name": "starting", "__meta_kubernetes_pod_phase": "Pending"},
    ]  # fmt: skip
    job["static_configs"] = [
        # One target per declared container port, at the pod's address, as pod discovery makes them.
        {"targets": [f"127.0.0.1:{main.port}", f"127.0.0.1:{probe.port}"], "labels": pod},
        *({"targets": [f"127.0.0.1:{main.port}"], "labels": labels} for labels in others),
    ]
    prometheus = start_prometheus([job])

    scraped = 'up{job="phoenix",namespace="shop",pod="phoenix-7d9f"}'
    prometheus.wait(scraped, is_one, "the annotated pod scraped with the token")
    targets = prometheus.api("targets")
    (active,) = targets["activeTargets"]
    assert active["scrapeUrl"] == f"http://127.0.0.1:{probe.port}/metrics"
    assert active["labels"] == {
        "job": "phoenix",
        "instance": f"127.0.0.1:{probe.port}",
        "namespace": "shop",
        "pod": "phoenix-7d9f",
    }
    dropped = {t["discoveredLabels"]["__meta_kubernetes_pod_name"] for t in targets["droppedTargets"]}
    assert dropped == {"opted-out", "not-phoenix", "starting"}
    assert prometheus.value('phoenix_build_info{pod="phoenix-7d9f"}') == 1


def test_the_alert_rules_ask_for_series_phoenix_exposes(serve: Any) -> None:
    server = serve("--app", "tests.apps:failing")
    assert server.request("/ready").status == 503  # every check has run
    scrape = server.request("/metrics").body.decode()
    exposed = {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if not line.startswith("#")}
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    used = {name for rule in rules for name in re.findall(r"\bphoenix_\w+", rule["expr"])}
    assert len(rules) == 5
    assert used
    assert used <= exposed, used - exposed
    # The job the rules name is the one both scrape configs make.
    assert all('job="phoenix"' in rule["expr"] for rule in rules if "up{" in rule["expr"])


def kubernetes_documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERNETES.read_text())}


def test_the_scrape_configs_match_the_deployment() -> None:
    deployment = kubernetes_documents()["Deployment"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    probes = next(p for p in container["ports"] if p["name"] == "probes")
    token_secret = next(e for e in container["env"] if e["name"] == "PHOENIX_TOKEN")["valueFrom"][
        "secretKeyRef"
    ]

    service, monitor = yaml.safe_load_all(SERVICEMONITOR.read_text())
    assert (service["kind"], monitor["kind"]) == ("Service", "ServiceMonitor")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert (port["targetPort"], port["port"]) == (probes["name"], probes["containerPort"])
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    assert endpoint["authorization"]["credentials"] == token_secret  # details = "token": the pod's token
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "phoenix"

    (job,) = yaml.safe_load(SCRAPE_KUBERNETES.read_text())["scrape_configs"]
    assert job["job_name"] == "phoenix"
    keep_app = next(
        r for r in job["relabel_configs"] if r.get("source_labels") == ["__meta_kubernetes_pod_label_app"]
    )
    assert re.fullmatch(keep_app["regex"], template["metadata"]["labels"]["app"])
    assert token_secret["name"] in job["authorization"]["credentials_file"]
