"""The RSGI handler in-process, with stand-ins for Granian's scope and protocol: what is answered at
once, what waits for a round, and how failures come out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from phoenix import Kernel


@dataclass
class Scope:
    method: str
    path: str
    query_string: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class BrokenScope:
    """A readiness request whose query cannot be read: the core fails while answering."""

    method = "GET"
    path = "/ready"
    headers: ClassVar[dict[str, str]] = {}

    @property
    def query_string(self) -> str:
        raise RuntimeError("scope failure with /private/detail")


@dataclass
class Proto:
    sent: list[tuple[int, list[tuple[str, str]], bytes]] = field(default_factory=list)

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.sent.append((status, headers, body))


def finish(awaitable: Awaitable[None]) -> None:
    async def run() -> None:
        await awaitable

    asyncio.run(run())


def test_a_cached_answer_is_sent_without_suspending() -> None:
    handler = Kernel(request_log=False).__rsgi__
    proto = Proto()
    coroutine = handler(Scope("GET", "/health"), proto).__await__()
    # Its first step finishes it: a cache hit never waits on the event loop.
    with pytest.raises(StopIteration):
        coroutine.send(None)
    assert len(proto.sent) == 1
    status, headers, body = proto.sent[0]
    assert status == 200
    assert ("content-type", "application/json") in headers
    assert json.loads(body)["status"] == "healthy"


@pytest.mark.parametrize(
    ("method", "path", "status", "empty"),
    [("HEAD", "/health", 200, True), ("GET", "/nowhere", 404, False), ("POST", "/health", 405, False)],
)
def test_heads_and_errors_are_answered(method: str, path: str, status: int, empty: bool) -> None:
    handler = Kernel(request_log=False).__rsgi__
    proto = Proto()
    finish(handler(Scope(method, path), proto))
    assert [sent[0] for sent in proto.sent] == [status]
    body = proto.sent[0][2]
    assert (body == b"") is empty
    if not empty:
        assert json.loads(body)["code"] == status


def test_a_cold_ready_request_waits_on_the_slow_path() -> None:
    kernel = Kernel(request_log=False)

    @kernel.subsystem("db", threshold=0.5)
    def db() -> float:
        return 0.9

    proto = Proto()

    async def run() -> None:
        kernel.start()
        waiting = asyncio.ensure_future(kernel.__rsgi__(Scope("GET", "/ready"), proto))
        await asyncio.sleep(0)
        # Nothing servable before the first round: nothing sent yet, the answer comes after the wait.
        assert proto.sent == []
        assert not waiting.done()
        await waiting

    asyncio.run(run())
    assert len(proto.sent) == 1
    status, _, body = proto.sent[0]
    assert status == 200
    assert json.loads(body)["subsystems"]["db"]["metric"] == 0.9


def test_a_failure_becomes_a_json_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    handler = Kernel(request_log=False).__rsgi__
    proto = Proto()
    finish(handler(BrokenScope(), proto))
    status, _, body = proto.sent[0]
    assert status == 500
    assert json.loads(body)["code"] == 500
    assert b"private" not in body
    assert b"Traceback" not in body
    # The failure itself goes to the log, with its traceback.
    assert any(record.exc_info for record in caplog.records if record.name == "phoenix.app")


def test_answers_are_logged_by_the_core(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # The handler honours the phoenix.api level as it stands when the handler is built.
    caplog.set_level(logging.INFO, logger="phoenix.api")
    kernel = Kernel(request_log=True)
    finish(kernel.__rsgi__(Scope("GET", "/health"), Proto()))
    finish(kernel.__rsgi__(Scope("GET", "/nowhere"), Proto()))
    kernel._core.flush_log()
    err = capfd.readouterr().err
    assert " INFO phoenix.api: GET /health 200 " in err
    assert " INFO phoenix.api: GET /nowhere 404 " in err


def test_the_request_log_can_be_switched_off(capfd: pytest.CaptureFixture[str]) -> None:
    kernel = Kernel(request_log=False)
    finish(kernel.__rsgi__(Scope("GET", "/health"), Proto()))
    kernel._core.flush_log()
    assert "phoenix.api" not in capfd.readouterr().err


def test_anything_with_the_scope_attributes_is_accepted() -> None:
    class Request:
        method = "GET"
        path = "/live"

    proto = Proto()
    kernel = Kernel(request_log=False)
    finish(kernel.__rsgi__(Request(), proto))
    assert proto.sent[0][0] == 200
    assert json.loads(proto.sent[0][2]) == {"status": "alive"}


def test_a_protocol_that_cannot_send_is_an_error_for_the_server() -> None:
    # The error reaches the server (Granian then answers 500 itself): nothing else could send.
    handler = Kernel(request_log=False).__rsgi__
    with pytest.raises(AttributeError):
        finish(handler(Scope("GET", "/health"), object()))
