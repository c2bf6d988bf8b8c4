"""End to end: requests at the edges of HTTP (odd paths, huge queries and headers) against a real
served kernel. Each gets an answer (a JSON error from Phoenix, or Granian's own HTTP error when the
request never reaches Phoenix), never a 500, a hang or a dropped connection, and the server keeps
serving afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import MutableMapping
from typing import Any

from phoenix import Kernel

from .conftest import Response, Server, assert_json_error

BEARER = b"Bearer s3cret"
# Granian's HTTP/1 buffer (`--http1-buffer-size`, 417,792 bytes by default) holds the request head:
# a 64 KiB header fits and reaches Phoenix; one of 1 MiB does not, and Granian answers it itself.
FITS_IN_GRANIAN = 64 * 1024
BEYOND_GRANIAN = 1024 * 1024
# The most `exclude=x` that fit in a URI Granian accepts (its HTTP library refuses URIs over 64 KiB
# with 414): 10,000 of them never reach Phoenix over HTTP/1.
MOST_EXCLUDES_OVER_HTTP = 5_000
MANY_EXCLUDES = 10_000


def raw_request(server: Server, head: bytes, timeout: float = 30.0) -> bytes:
    """Sends ``head`` (request line and headers, as bytes) on a fresh connection; returns all the
    server sent back before closing. The timeout only bounds the wait for an answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        # The server may answer and close before it has read everything: then read its answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def get(server: Server, target: bytes, headers: bytes = b"") -> Response:
    answer = raw_request(
        server, b"GET " + target + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + headers + b"\r\n"
    )
    assert answer, "the server closed the connection without answering"
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return Response(int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body)


def assert_still_serving(server: Server) -> None:
    assert server.proc.poll() is None, server.logs()
    assert server.request("/health").status == 200


def test_undecodable_and_odd_subsystem_names_are_json_404s(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    # Percent-escapes of bytes that cannot be a name: invalid UTF-8, a slash, NUL, alone or inside a
    # real subsystem's name (which must not match `db`, e.g. by stopping at the NUL).
    names = [
        "%FF",
        "%2F",
        "%00",
        "db%FF",
        "db%2F",
        "%2Fdb",
        "db%00",
        "%00db",
        "d%00b",
        "db%2F..%2Fqueue",
        "%",
        "%zz",
    ]
    for name in names:
        for query in ("", "?verbose", "?format=health+json"):
            target = f"/ready/{name}{query}"
            response = server.request(target)
            assert response.status in (400, 404), (target, response.status, response.body)
            assert_json_error(response, response.status)
            assert server.request(target, method="HEAD").status == response.status, target
    assert_still_serving(server)


def test_a_percent_encoded_utf8_name_reaches_its_subsystem(serve: Any) -> None:
    server = serve("--app", "tests.apps:non_ascii_name")
    response = server.request("/ready/caf%C3%A9")
    assert response.status == 200, response.body
    assert response.json()["name"] == "café"


def test_a_raw_non_ascii_byte_in_the_path_is_an_http_error(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    # Not valid in a request target: Granian refuses it before Phoenix sees it.
    assert get(server, b"/ready/\xff").status == 400
    assert_still_serving(server)


def test_a_few_exclusions_work_however_they_repeat(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    repeated = server.request("/ready?exclude=queue&exclude=queue&exclude=queue")
    assert repeated.status == 200, repeated.body
    assert list(repeated.json()["subsystems"]) == ["db", "cache"]
    everything = server.request("/ready?exclude=db&exclude=cache&exclude=queue")
    assert (everything.status, everything.json()) == (200, {"status": "ready", "subsystems": {}})


def test_thousands_of_exclusions_are_a_json_400(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    response = server.request("/ready?" + "&".join(["exclude=x"] * MOST_EXCLUDES_OVER_HTTP))
    assert_json_error(response, 400)
    assert server.request("/ready?exclude=queue").status == 200


def test_ten_thousand_exclusions_over_http_are_an_http_error(serve: Any) -> None:
    server = serve("--app", "tests.apps:probes")
    target = b"/ready?" + b"&".join([b"exclude=x"] * MANY_EXCLUDES)
    response = get(server, target)
    # Granian answers 414 URI Too Long itself; if a URI this long ever reaches Phoenix, a JSON 400.
    if response.status == 400:
        assert_json_error(response, 400)
    else:
        assert response.status == 414, (response.status, response.body)
    assert_still_serving(server)


def test_ten_thousand_exclusions_are_a_json_400_from_the_core() -> None:
    # Behind a server with no URI limit (the kernel mounted as ASGI), the core meets them itself.
    kernel = Kernel()
    kernel.add_ping("db")
    query = "&".join(["exclude=x"] * MANY_EXCLUDES).encode()
    scope = {"type": "http", "method": "GET", "path": "/ready", "query_string": query, "headers": []}
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(kernel.asgi()(scope, receive, send))
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    response = Response(start["status"], headers, body["body"])
    assert_json_error(response, 400)


def test_a_64_kib_authorization_header_gets_the_status_only(serve: Any) -> None:
    server = serve("--app", "tests.apps:guarded")
    for value in (
        b"Bearer " + b"a" * FITS_IN_GRANIAN,
        BEARER + b"a" * FITS_IN_GRANIAN,
        b"a" * FITS_IN_GRANIAN,
    ):
        response = get(server, b"/ready", b"Authorization: " + value + b"\r\n")
        assert (response.status, response.json()) == (200, {"status": "ready"})
    assert (
        get(server, b"/ready", b"Authorization: " + BEARER + b"\r\n").json()["subsystems"]["db"]["metric"]
        == 0.9
    )


def test_an_authorization_header_beyond_granians_buffer_is_an_http_error(serve: Any) -> None:
    server = serve("--app", "tests.apps:guarded")
    head = (
        b"GET /ready HTTP/1.1\r\nHost: test\r\nAuthorization: " + BEARER + b"a" * BEYOND_GRANIAN + b"\r\n\r\n"
    )
    try:
        answer = raw_request(server, head)
    except ConnectionResetError:
        # Granian answers 431 and closes with the rest of the header unread, which resets the
        # connection: the client may lose the answer. Refused either way.
        answer = b""
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status == 431, answer[:200]
        assert b"subsystems" not in answer
    assert_still_serving(server)
    assert (
        get(server, b"/ready", b"Authorization: " + BEARER + b"\r\n").json()["subsystems"]["db"]["metric"]
        == 0.9
    )


def test_a_non_ascii_authorization_header_gets_the_status_only(serve: Any) -> None:
    server = serve("--app", "tests.apps:guarded")
    values = [
        "Bearer s3crét".encode(),  # UTF-8
        "Bearer s3crét".encode("latin-1"),  # not UTF-8
        b"Bearer \xff\xfe\x80",
        BEARER + b"\xff",  # the token, then a byte that is not ASCII
        b"\xc3\xa9 s3cret",
    ]
    for value in values:
        response = get(server, b"/ready", b"Authorization: " + value + b"\r\n")
        assert (response.status, response.json()) == (200, {"status": "ready"}), value
        verbose = get(server, b"/ready?verbose", b"Authorization: " + value + b"\r\n")
        assert (verbose.status, verbose.body) == (200, b"readyz check passed\n"), value
        one = get(server, b"/ready/db", b"Authorization: " + value + b"\r\n")
        assert (one.status, one.json()) == (200, {"status": "pass"}), value
    assert_still_serving(server)
    assert (
        get(server, b"/ready", b"Authorization: " + BEARER + b"\r\n").json()["subsystems"]["db"]["metric"]
        == 0.9
    )
