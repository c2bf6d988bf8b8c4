"""The HTTP and TCP servers the http and tcp dependency checks are benchmarked against
(benches/test_dependencies.py), run as a process of their own so that their work is not counted in the
benchmark's CPU time.

    python benches/reference_servers.py

prints ``{"http": PORT, "tcp": PORT}`` (a line of JSON) once both listen on 127.0.0.1, and serves until
its standard input closes. The HTTP server answers every ``GET`` with ``200 ok`` over HTTP/1.1 keep-alive;
the TCP server accepts each connection and closes it.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import sys
import threading

BODY = b"ok"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        # One write for the whole answer: headers and body sent apart would meet Nagle's algorithm and the
        # client's delayed ACK, and every request would wait 40 ms for it.
        head = f"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {len(BODY)}\r\n\r\n"
        self.wfile.write(head.encode() + BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a log line per request would cost more than the request."""


class Closer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        """Nothing: the server closes the connection once this returns."""


class ThreadingTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    # A check connects hundreds of times a second: the listen queue must hold them.
    request_queue_size = 1024


def main() -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    web.daemon_threads = True
    tcp = ThreadingTCPServer(("127.0.0.1", 0), Closer)
    for server in (web, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"http": web.server_address[1], "tcp": tcp.server_address[1]}), flush=True)
    # Until the benchmark closes our stdin (or exits).
    sys.stdin.read()
    for server in (web, tcp):
        server.shutdown()


if __name__ == "__main__":
    main()
