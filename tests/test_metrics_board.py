"""Several workers, one server: a scrape answered by any worker reports them all (rust/metrics/board.rs)."""

from __future__ import annotations

import re
from typing import Any

from .conftest import Server, wait_until


def series(scrape: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` with exactly ``labels`` (in any order), if any."""
    for line in scrape.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'([a-z_]+)="([^"]*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    return None


def scrape(server: Server) -> str:
    answer = server.request("/metrics")  # a new connection each time: either worker may answer
    assert answer.status == 200, answer.body
    return answer.body.decode()


def test_any_worker_reports_every_workers_checks_and_requests(serve: Any) -> None:
    server = serve("--app", "tests.apps:worker_pid", "--workers", "2")
    pids: set[int] = set()
    asked = 0

    def both_answered() -> bool:
        nonlocal asked
        answer = server.request("/ready")
        asked += 1
        assert answer.status == 200, answer.body
        (name,) = answer.json()["subsystems"]
        pids.add(int(name.removeprefix("pid_")))
        return len(pids) == 2

    wait_until(both_answered, what="both workers to answer /ready", server=server)
    assert pids == set(server.worker_pids())

    def whole_server(text: str) -> bool:
        requests = series(text, "phoenix_http_requests_total", route="/ready", method="GET", code="200")
        runs = [series(text, "phoenix_check_runs_total", check=f"pid_{pid}", result="pass") for pid in pids]
        return requests == asked and all(count is not None and count >= 1 for count in runs)

    def every_scrape_sees_the_whole_server() -> bool:
        # Twenty scrapes, each on a new connection: whichever worker answers must report both. Siblings
        # publish once a second, so this holds from the moment both have published since /ready.
        texts = [scrape(server) for _ in range(20)]
        return all(
            whole_server(text)
            and all(
                series(text, "phoenix_check_status", check=f"pid_{pid}", status="pass") == 1 for pid in pids
            )
            and series(text, "phoenix_ready") == 1
            for text in texts
        )

    wait_until(every_scrape_sees_the_whole_server, what="every scrape to report both workers", server=server)
