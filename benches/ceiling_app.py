"""The ceiling for benches/http_harness.py: a bare Granian RSGI app answering every request with static
bytes, served with exactly the Granian settings ``phoenix serve`` uses (see ``phoenix.cli._serve``).

Run: ``python benches/ceiling_app.py --port 8001 [--host 127.0.0.1] [--log-level info] [--http 1|2]``.
"""

from __future__ import annotations

import argparse
from typing import Any

# Same length (78 bytes) and shape as a Phoenix /health body, so the bytes on the wire match.
BODY = b'{"status":"healthy","uptime_seconds":0,"timestamp":"2026-01-01T00:00:00.000Z"}'
HEADERS = [("content-type", "application/json")]


async def app(scope: Any, proto: Any) -> None:
    proto.response_bytes(200, HEADERS, BODY)


def main() -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LOGGING_CONFIG, LogLevels

    from phoenix.log import dictconfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--http", choices=["1", "2"], default="1", help="as phoenix serve --http")
    args = parser.parse_args()
    # Mirrors phoenix.cli._serve option for option (workers = 1, uvloop, --http, no websockets), so the
    # only difference from Phoenix is the application. Keep the two in step.
    Granian(
        "ceiling_app:app",
        address=args.host,
        port=args.port,
        interface=Interfaces.RSGI,
        workers=1,
        loop=Loops.uvloop,
        http=HTTPModes(args.http),
        websockets=False,
        log_level=LogLevels(args.log_level),
        log_dictconfig=dictconfig(args.log_level, base=LOGGING_CONFIG),
    ).serve()


if __name__ == "__main__":
    main()
