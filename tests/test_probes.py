"""End to end: the production probe semantics (Kubernetes split, formats, details, drain)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

from phoenix import default_kernel
from phoenix.app import _ASGIRequest

from .conftest import Server, wait_for_answer, wait_until

BEARER = {"Authorization": "Bearer s3cret"}

NO_REQUEST = _ASGIRequest("", {})


def write_metric(path: Path, value: float) -> None:
    path.write_text(str(value))


def test_live_never_depends_on_subsystems(serve: Any) -> None:
    server = serve("--app", "tests.apps:failing")
    assert server.request("/ready").status == 503
    live = server.request("/live")
    # The served loop beats, so its lag is reported: a few ms at most, but any number will do here.
    assert live.status == 200
    assert live.json().keys() == {"status", "loop_lag_ms"}
    assert live.json()["status"] == "alive"
    assert isinstance(live.json()["loop_lag_ms"], int)
    assert server.request("/live", method="HEAD").status == 200
    assert server.request("/live", method="POST").status == 405


def test_startup_is_503_until_initialised_then_200_for_good(tmp_path: Path) -> None:
    kernel = default_kernel(tmp_path)

    def startup() -> tuple[int, bytes]:
        response = kernel._core.route("GET", "/startup", NO_REQUEST)
        assert response is not None
        return response[0], response[2]

    async def run() -> None:
        assert startup() == (503, b'{"status":"starting"}')
        kernel.start()
        await asyncio.wait_for(kernel.wait_initialised(), 10)
        assert startup() == (200, b'{"status":"started"}')

    asyncio.run(run())


def test_startup_answers_200_on_a_served_kernel(serve: Any) -> None:
    server = serve()
    wait_until(lambda: server.request("/startup").status == 200, what="/startup to answer 200")
    assert server.request("/startup").json() == {"status": "started"}


def test_one_subsystem_by_name(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    db = server.request("/ready/db")
    assert db.status == 200
    assert db.json()["name"] == "db"
    assert db.json()["status"] == "pass"
    queue = server.request("/ready/queue")
    assert queue.status == 503
    assert queue.json()["error"] == "metric 0.50 <= 0.90"
    missing = server.request("/ready/nope")
    assert missing.status == 404
    assert missing.json()["error"] == "Not Found"


def test_warn_keeps_ready_and_shows_in_the_body(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    response = server.request("/ready?exclude=queue")
    assert response.status == 200
    cache = response.json()["subsystems"]["cache"]
    assert cache["status"] == "warn"
    assert cache["ready"] is True
    assert cache["warning"] == "metric 0.70 <= warn 0.80"
    assert "queue" not in response.json()["subsystems"]


def test_verbose_lists_checks_kubernetes_style(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    response = server.request("/ready?verbose")
    assert response.status == 503
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.body.decode().splitlines()
    assert re.fullmatch(r"\[\+\]db ok \(\d+\.\d ms\)", lines[0]), lines
    assert lines[1].startswith("[+]cache warn: metric 0.70 <= warn 0.80")
    assert lines[2] == "[-]queue failed: metric 0.50 <= 0.90"
    assert lines[-1] == "readyz check failed"
    excluded = server.request("/ready?verbose&exclude=queue")
    assert excluded.status == 200
    assert "[+]queue excluded: ok" in excluded.body.decode()
    assert excluded.body.decode().splitlines()[-1] == "readyz check passed"


def test_exclude_is_repeatable(serve: Any) -> None:
    server = serve("--app", "tests.apps:failing")
    assert server.request("/ready?exclude=raises").status == 503
    both = server.request("/ready?exclude=raises&exclude=low")
    assert both.status == 200
    assert list(both.json()["subsystems"]) == ["ok"]


def test_health_json_by_accept_header_and_by_query(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    by_header = server.request("/ready", headers={"Accept": "application/health+json"})
    by_query = server.request("/ready?format=health+json")
    for response in (by_header, by_query):
        assert response.status == 503
        assert response.headers["content-type"] == "application/health+json"
        body = response.json()
        assert body["status"] == "fail"
        assert set(body["checks"]) == {"db:metric", "cache:metric", "queue:metric"}
        queue = body["checks"]["queue:metric"][0]
        assert queue["status"] == "fail"
        assert queue["observedValue"] == 0.5
        assert queue["observedUnit"] == "ratio"
        assert queue["output"] == "metric 0.50 <= 0.90"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", queue["time"])
        assert body["checks"]["cache:metric"][0]["status"] == "warn"
    warn = server.request("/ready?format=health+json&exclude=queue")
    assert (warn.status, warn.json()["status"]) == (200, "warn")


def test_token_details_need_the_bearer_token(serve: Any) -> None:
    server = serve("--app", "tests.apps:guarded")
    anonymous = server.request("/ready")
    assert (anonymous.status, anonymous.json()) == (200, {"status": "ready"})
    wrong = server.request("/ready", headers={"Authorization": "Bearer s3cret-not"})
    assert wrong.json() == {"status": "ready"}
    authorised = server.request("/ready", headers=BEARER)
    assert authorised.json()["subsystems"]["db"]["metric"] == 0.9
    assert server.request("/ready?verbose").body == b"readyz check passed\n"
    assert b"[+]db ok" in server.request("/ready?verbose", headers=BEARER).body
    assert server.request("/ready/db").json() == {"status": "pass"}
    assert server.request("/ready/db", headers=BEARER).json()["metric"] == 0.9


def test_details_never_shows_only_the_status(serve: Any) -> None:
    server = serve("--app", "tests.apps:private")
    assert server.request("/ready").json() == {"status": "ready"}
    assert server.request("/ready", headers=BEARER).json() == {"status": "ready"}


def test_background_check_result_changes_over_time(serve: Any, tmp_path: Path) -> None:
    metric = tmp_path / "metric"
    write_metric(metric, 0.2)
    server = serve("--app", "tests.apps:background", env={"PHOENIX_TEST_METRIC": str(metric)})
    wait_until(lambda: server.request("/ready/bg").json().get("status") == "fail", what="bg to fail")
    write_metric(metric, 0.9)
    wait_until(lambda: server.request("/ready").status == 200, what="/ready to answer 200")
    assert server.request("/ready/bg").json()["metric"] == 0.9
    write_metric(metric, 0.1)
    wait_until(lambda: server.request("/ready").status == 503, what="/ready to answer 503")


def test_readiness_flips_after_n_failures_and_back_on_first_success(serve: Any, tmp_path: Path) -> None:
    metric = tmp_path / "metric"
    write_metric(metric, 1.0)
    server = serve("--app", "tests.apps:scripted", env={"PHOENIX_TEST_METRIC": str(metric)})
    assert server.request("/ready").status == 200
    write_metric(metric, 0.0)
    tolerated = [server.request("/ready") for _ in range(2)]
    assert [r.status for r in tolerated] == [200, 200]
    assert tolerated[0].json()["subsystems"]["scripted"]["status"] == "warn"
    assert tolerated[1].json()["subsystems"]["scripted"]["warning"].startswith("failure 2 of 3 tolerated")
    assert server.request("/ready").status == 503
    write_metric(metric, 1.0)
    assert server.request("/ready").status == 200


def test_transitions_are_logged_once_when_they_happen(serve: Any, tmp_path: Path) -> None:
    metric = tmp_path / "metric"
    write_metric(metric, 1.0)
    server = serve("--app", "tests.apps:scripted", env={"PHOENIX_TEST_METRIC": str(metric)})
    for value in (1.0, 1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 1.0, 1.0):
        write_metric(metric, value)
        server.request("/ready")
    server.stop()
    log = server.logs()
    assert log.count("scripted: pending -> pass") == 1, log
    assert log.count("scripted: pass -> warn (failure 1 of 3 tolerated: metric 0.20 <= 0.50)") == 1, log
    assert log.count("scripted: warn -> fail (metric 0.20 <= 0.50)") == 1, log
    assert log.count("scripted: fail -> pass") == 1, log


# Drains of ten minutes: a test that sees the server exit, or stop serving, within its bounded waits
# (well under a minute) has seen something other than the drain running its course.
LONG_DRAIN = {"PHOENIX_SHUTDOWN_DRAIN_MS": "600000"}


def test_sigterm_drains_ready_at_once_while_serving(serve: Any) -> None:
    server: Server = serve("--app", "tests.apps:empty", env=LONG_DRAIN)
    assert server.request("/ready").status == 200
    server.proc.send_signal(signal.SIGTERM)
    # The signal reaches the worker asynchronously: a request or two may still be answered 200, but
    # 503 comes at once, not at the end of the drain, and stays.
    draining = wait_for_answer(server, "/ready", lambda r: r.status == 503, "/ready to answer 503")
    assert draining.json() == {"status": "draining"}
    # The drain lasts: everything else is still served after /ready started answering 503.
    assert server.request("/health").status == 200
    assert server.request("/live").status == 200
    assert server.request("/ready").status == 503
    assert server.proc.poll() is None, "still serving during the drain"
    assert "Shutting down granian" not in server.logs()
    # A second signal skips the rest of the drain: a graceful shutdown, exit status 0.
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_status() == 0
    assert "Unexpected exit" not in server.logs()


def test_drain_ends_by_itself_then_shuts_down_with_status_0(serve: Any) -> None:
    server: Server = serve("--app", "tests.apps:empty", env={"PHOENIX_SHUTDOWN_DRAIN_MS": "300"})
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_status() == 0
    logs = server.logs()
    assert "draining for 300 ms before shutting down" in logs, logs
    assert logs.index("draining for 300 ms") < logs.index("Shutting down granian"), logs
    assert "Unexpected exit" not in logs


def test_ctrl_c_to_the_process_group_stops_at_once_with_status_0(serve: Any) -> None:
    server: Server = serve("--app", "tests.apps:empty", env=LONG_DRAIN)
    os.killpg(server.proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert server.exit_status() == 0  # without waiting for the drain
    assert "draining for" not in server.logs()
    assert "Unexpected exit" not in server.logs()
