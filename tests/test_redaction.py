"""End to end: a check's error text keeps no credential, in any response format or in the log."""

from __future__ import annotations

from typing import Any

SECRET = "hunter2"
REDACTED_ERROR = "ConnectionError: could not connect to postgres://app:<redacted>@db/app password=<redacted>"


def test_credentials_in_a_check_error_reach_neither_client_nor_log(serve: Any) -> None:
    server = serve("--app", "tests.apps:leaky")
    ready = server.request("/ready")
    assert ready.status == 503
    error = ready.json()["subsystems"]["db"]["error"]
    assert error == REDACTED_ERROR
    for path, headers in [
        ("/ready/db", {}),
        ("/ready?verbose", {}),
        ("/ready", {"Accept": "application/health+json"}),
    ]:
        response = server.request(path, headers=headers)
        assert response.status == 503
        assert b"<redacted>" in response.body, response.body
        assert SECRET.encode() not in response.body, response.body
    server.stop()
    logs = server.logs()
    assert "db: pending -> fail (ConnectionError: could not connect" in logs, logs
    assert SECRET not in logs, logs
