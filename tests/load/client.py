"""A small asyncio HTTP/1.1 client and the seed's load patterns, each returning a :class:`LoadResult`.

Nothing raises mid-run: a request that fails (an exception, a timeout, or an unexpected status) is
counted with its reason, so every run ends with a table and the test then asserts on the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from .result import LoadResult

HOST = "127.0.0.1"
# No single request may hang the suite; a healthy loopback answer takes well under a millisecond.
REQUEST_TIMEOUT_S = 10.0


class Connection:
    """One HTTP/1.1 connection; responses must carry a Content-Length (Phoenix's always do)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def get(self, path: str, *, close: bool = False) -> tuple[int, bytes]:
        """Sends ``GET path`` and reads the whole response; returns its status and body."""
        extra = "Connection: close\r\n" if close else ""
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode("ascii"))
        await self._writer.drain()
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before the status line")
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
            raise ValueError(f"malformed status line {status_line!r}")
        status = int(rest[:3])
        length: int | None = None
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionError("connection closed in the headers")
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError("response without Content-Length")
        return status, await self._reader.readexactly(length)

    def abort(self) -> None:
        """Closes without waiting: safe inside a cancelled task."""
        self._writer.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class KeepAlive:
    """A keep-alive connection that is reopened (inside the next timed request) after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: Connection | None = None

    async def connect(self) -> None:
        if self._conn is None:
            self._conn = await Connection.open(self.port)

    async def prepare(self) -> None:
        """Connects before the clock starts; a failure is left to the first timed request to count."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connect(), REQUEST_TIMEOUT_S)

    async def get(self, path: str) -> tuple[int, bytes]:
        try:
            await self.connect()
            assert self._conn is not None
            return await self._conn.get(path)
        except BaseException:
            if self._conn is not None:
                self._conn.abort()
                self._conn = None
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


async def timed(
    result: LoadResult, expected: int, request: Callable[[], Awaitable[tuple[int, bytes]]]
) -> None:
    """Runs one request under the per-request timeout and records it in ``result``."""
    started = time.perf_counter()
    try:
        status, _body = await asyncio.wait_for(request(), REQUEST_TIMEOUT_S)
    except Exception as exc:  # counted, never raised: the run must finish and print its table
        result.fail(type(exc).__name__)
        return
    latency = time.perf_counter() - started
    if status == expected:
        result.succeed(latency)
    else:
        result.fail(f"status {status}")


async def sequential(name: str, port: int, path: str, n: int, expected: int = 200) -> LoadResult:
    """``n`` requests one after another on one keep-alive connection (opened before the clock starts)."""
    result = LoadResult(name, total=n)
    conn = KeepAlive(port)
    await conn.prepare()
    started = time.perf_counter()
    for _ in range(n):
        await timed(result, expected, lambda: conn.get(path))
    result.duration = time.perf_counter() - started
    await conn.close()
    return result


async def concurrent(
    name: str, port: int, path: str, n: int, connections: int, expected: int = 200
) -> LoadResult:
    """``n`` requests over ``connections`` keep-alive connections, each sending its share in turn."""
    result = LoadResult(name, total=n)
    conns = [KeepAlive(port) for _ in range(connections)]
    await asyncio.gather(*(conn.prepare() for conn in conns))
    shares = [n // connections + (i < n % connections) for i in range(connections)]

    async def worker(conn: KeepAlive, share: int) -> None:
        for _ in range(share):
            await timed(result, expected, lambda: conn.get(path))

    started = time.perf_counter()
    await asyncio.gather(*(worker(conn, share) for conn, share in zip(conns, shares, strict=True)))
    result.duration = time.perf_counter() - started
    await asyncio.gather(*(conn.close() for conn in conns))
    return result


async def burst(name: str, port: int, path: str, n: int, expected: int = 200) -> LoadResult:
    """``n`` requests at once, each on its own new connection (``Connection: close``); a request's
    latency includes its connect."""
    result = LoadResult(name, total=n)

    async def one() -> tuple[int, bytes]:
        conn = await Connection.open(port)
        try:
            return await conn.get(path, close=True)
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(timed(result, expected, one) for _ in range(n)))
    result.duration = time.perf_counter() - started
    return result


async def paced(
    name: str, port: int, path: str, rate: float, duration_s: float, expected: int = 200, warmup: int = 5
) -> LoadResult:
    """``rate`` requests a second for ``duration_s`` on one keep-alive connection, on a fixed schedule
    (a late request does not shift the ones after it). ``warmup`` requests go first, unrecorded, so
    that a cold first request does not flatter the comparison of early and late latencies."""
    n = round(rate * duration_s)
    result = LoadResult(name, total=n)
    conn = KeepAlive(port)
    for _ in range(warmup):
        try:
            await asyncio.wait_for(conn.get(path), REQUEST_TIMEOUT_S)
        except Exception:  # the measured requests will count whatever is wrong
            break
    started = time.perf_counter()
    for i in range(n):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await timed(result, expected, lambda: conn.get(path))
    result.duration = time.perf_counter() - started
    await conn.close()
    return result
