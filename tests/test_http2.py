"""`phoenix serve --http 1|2|auto`: which HTTP versions the main port speaks, asked by real clients
(curl, and httpx with h2). HTTP/2 is cleartext with prior knowledge (h2c): no TLS to negotiate it by ALPN."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, wait_until
from .test_cli import phoenix


@pytest.fixture(scope="session")
def curl() -> str:
    """curl with HTTP/2 support, installed from Debian's packages when missing (CI runs as root on a
    fresh machine)."""
    if shutil.which("curl") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "curl"]
        subprocess.run(install, check=True, env=env)
    path = shutil.which("curl")
    assert path is not None, "curl is not installed and could not be"
    features = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    assert "HTTP2" in features, features
    return path


@dataclass
class CurlAnswer:
    http_version: str  # as curl's %{http_version} reports it: "1.1", "2", or "0" for no answer
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def curl_get(curl: str, server: Server, path: str, *flags: str) -> CurlAnswer:
    """GET ``path`` from ``server`` with curl and ``flags`` (e.g. ``--http2-prior-knowledge``)."""
    body = server.log_path.with_name(f"curl-body-{server.port}")
    body.unlink(missing_ok=True)
    write_out = "%{http_version} %{response_code} %{content_type}"
    url = f"http://127.0.0.1:{server.port}{path}"
    result = subprocess.run(
        [curl, "-s", "--max-time", "10", *flags, "-o", str(body), "-w", write_out, url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    version, status, content_type = [*result.stdout.split(" ", 2), ""][:3]
    return CurlAnswer(version, int(status), content_type, body.read_bytes() if body.exists() else b"")


def health_and_ready(curl: str, server: Server, *flags: str) -> dict[str, CurlAnswer]:
    return {path: curl_get(curl, server, path, *flags) for path in ("/health", "/ready")}


def h2_client() -> httpx.Client:
    """An httpx client speaking HTTP/2 with prior knowledge (no HTTP/1.1 first, no upgrade)."""
    return httpx.Client(http1=False, http2=True, timeout=10)


def serve_until_ready(serve: Any, *args: str) -> Server:
    """``phoenix serve *args``, once its default kernel answers ``/ready`` with 200 over HTTP/2 prior
    knowledge (the conftest's wait speaks HTTP/1.1, which ``--http 2`` refuses)."""
    server: Server = serve(*args, wait=False)

    def ready() -> bool:
        assert server.proc.poll() is None, server.logs()
        try:
            with h2_client() as client:
                return client.get(f"http://127.0.0.1:{server.port}/ready").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, what="/ready to answer 200 over HTTP/2", server=server)
    return server


def assert_health_and_ready(answers: dict[str, CurlAnswer], version: str) -> None:
    health, ready = answers["/health"], answers["/ready"]
    assert (health.http_version, health.status, health.content_type) == (version, 200, "application/json")
    assert health.json()["status"] == "healthy"
    assert (ready.http_version, ready.status, ready.content_type) == (version, 200, "application/json")
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["subsystems"]) == {"plastic_ltm", "triune_conscience", "world_model"}


def test_http_2_answers_curl_with_prior_knowledge(serve: Any, curl: str) -> None:
    server = serve_until_ready(serve, "--http", "2")

    answers = health_and_ready(curl, server, "--http2-prior-knowledge")

    assert_health_and_ready(answers, "2")


def test_http_2_answers_httpx_with_prior_knowledge(serve: Any) -> None:
    server = serve_until_ready(serve, "--http", "2")

    with h2_client() as client:
        health = client.get(f"http://127.0.0.1:{server.port}/health")
        ready = client.get(f"http://127.0.0.1:{server.port}/ready")
        missing = client.get(f"http://127.0.0.1:{server.port}/nowhere")

    assert (health.http_version, health.status_code) == ("HTTP/2", 200)
    assert health.json()["status"] == "healthy"
    assert (ready.http_version, ready.status_code) == ("HTTP/2", 200)
    assert ready.json()["status"] == "ready"
    assert (missing.http_version, missing.status_code) == ("HTTP/2", 404)
    assert missing.json()["error"] == "Not Found"


def test_http_2_alone_refuses_http_1(serve: Any, curl: str, tmp_path: Path) -> None:
    server = serve_until_ready(serve, "--http", "2")

    for flags in (["--http1.1"], ["--http2"]):  # --http2 on http:// is HTTP/1.1 asking to upgrade
        answer = curl_get(curl, server, "/health", *flags)
        assert (answer.http_version, answer.status) == ("0", 0), (flags, answer)
    # `phoenix check` speaks HTTP/1.1: it says why it cannot ask this server, in one line.
    check = phoenix("check", cwd=tmp_path, env={"PHOENIX_PORT": str(server.port), "PHOENIX_HTTP": "2"})
    assert check.returncode == 2, check
    (line,) = check.stderr.strip().splitlines()
    assert 'with http = "2" the main port speaks HTTP/2 only: set probe_port' in line


def test_the_default_speaks_http_1_1_only(serve: Any, curl: str) -> None:
    server = serve()  # waits for an HTTP/1.1 answer
    wait_until(lambda: server.request("/ready").status == 200, what="/ready to answer 200", server=server)

    answers = health_and_ready(curl, server, "--http1.1")
    prior_knowledge = curl_get(curl, server, "/health", "--http2-prior-knowledge")
    upgrade = curl_get(curl, server, "/health", "--http2")

    assert_health_and_ready(answers, "1.1")
    assert (prior_knowledge.http_version, prior_knowledge.status) == ("0", 0), prior_knowledge
    assert (upgrade.http_version, upgrade.status) == ("1.1", 200)  # the upgrade is not taken up
    with httpx.Client(timeout=10) as client:
        assert client.get(f"http://127.0.0.1:{server.port}/health").http_version == "HTTP/1.1"


def test_auto_speaks_http_1_1_and_http_2_with_prior_knowledge_on_one_port(serve: Any, curl: str) -> None:
    server = serve_until_ready(serve, "--http", "auto")

    http_1 = health_and_ready(curl, server, "--http1.1")
    http_2 = health_and_ready(curl, server, "--http2-prior-knowledge")
    upgrade = curl_get(curl, server, "/health", "--http2")

    assert_health_and_ready(http_1, "1.1")
    assert_health_and_ready(http_2, "2")
    # Granian ignores `Upgrade: h2c`: a client that asks to upgrade is answered over HTTP/1.1.
    assert (upgrade.http_version, upgrade.status) == ("1.1", 200)
    with h2_client() as client:
        assert client.get(f"http://127.0.0.1:{server.port}/health").http_version == "HTTP/2"
    with httpx.Client(timeout=10) as client:
        assert client.get(f"http://127.0.0.1:{server.port}/health").http_version == "HTTP/1.1"
