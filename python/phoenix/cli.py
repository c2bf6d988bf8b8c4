"""``phoenix serve`` and ``phoenix check``.

Bad configuration is one line on stderr and exit status 2, before anything starts. ``serve`` resolves the
configuration once, in the parent, and hands it to Granian's worker processes as the argument of their
kernel loader (inherited when workers are forked, pickled through multiprocessing's pipe when spawned), not
through their environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import http.client
import importlib
import inspect
import itertools
import json
import logging
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

from . import __version__
from .config import KEYS, ConfigError, Settings, is_loopback, load_settings
from .kernel import DRAIN_SIGNAL, Kernel, default_kernel
from .log import configure, dictconfig

_log = logging.getLogger("phoenix.kernel")

# How long `phoenix check` waits for the native subsystems to come up before judging them.
CHECK_STARTUP_WAIT_S = 30.0
# How long `phoenix check` waits for a server's answer: a round takes as long as its slowest check's
# timeout (500 ms by default).
CHECK_ANSWER_TIMEOUT_S = 10.0


# Kernel's keyword arguments: each is a key of the one config table (tests/test_config.py holds them
# in step), so the default kernel takes them all from the settings by name.
KERNEL_OPTIONS: Final = tuple(p for p in inspect.signature(Kernel.__init__).parameters if p != "self")


def load_kernel(settings: Settings) -> Kernel:
    """The kernel named by ``settings.app`` (a Kernel, or a function returning one), else the default,
    with the config file's dependency checks added (what ``phoenix serve`` serves, ``phoenix check``
    evaluates)."""
    kernel = _named_kernel(settings)
    for check in settings.checks:
        try:
            kernel.add_dependency(check.name, check.kind, **check.settings)
        except ValueError as exc:
            # The core's one-line reason, which names the key and never a credential.
            raise ConfigError(f"invalid [[check]] {check.name!r} in {check.source}: {exc}") from None
    return kernel


def _named_kernel(settings: Settings) -> Kernel:
    if settings.app is None:
        options = {name: getattr(settings, name) for name in KERNEL_OPTIONS}
        return default_kernel(settings.data_dir, **options)
    module_name, _, attr_path = settings.app.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"invalid value for app: cannot import {module_name!r}: {exc}") from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ConfigError(f"invalid value for app: {settings.app!r} has no attribute {attr!r}") from None
    if not isinstance(target, Kernel) and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise ConfigError(
                f"invalid value for app: calling {settings.app!r} failed: {type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(target, Kernel):
        raise ConfigError(
            f"invalid value for app: {settings.app!r} is {type(target).__name__}, not a phoenix.Kernel"
        )
    return target


def served_kernel(settings: Settings) -> Kernel:
    """The kernel ``phoenix serve`` runs, built once in the parent (to fail early and to learn its drain)
    and again in each worker. Its own request log, metrics, drain and probe listener hold unless the
    command line, environment or config file sets them; its other settings shape the default kernel
    only."""
    kernel = load_kernel(settings)
    if "request_log" in settings.explicit:
        kernel.request_log = settings.request_log
    if "metrics" in settings.explicit:
        kernel.metrics = settings.metrics
    if "metrics_public" in settings.explicit:
        kernel.metrics_public = settings.metrics_public
    if "shutdown_drain_ms" in settings.explicit:
        kernel.shutdown_drain_ms = settings.shutdown_drain_ms
    if "probe_port" in settings.explicit:
        kernel.probe_port = settings.probe_port
    if "probe_host" in settings.explicit:
        kernel.probe_host = settings.probe_host
    return kernel


def worker_kernel(settings: Settings) -> Kernel:
    """Granian's kernel loader, called in each worker: the served kernel, its details settled."""
    kernel = served_kernel(settings)
    mode, _start_up_line = details_in_force(kernel, exposed_host(kernel, settings.host))  # the parent logs it
    kernel.details = mode
    if kernel.metrics and settings.workers > 1 and settings.port != 0:
        # Each worker answers scrapes for the whole server (see the README's "Several workers").
        kernel.share_metrics(settings.port)
    return kernel


def exposed_host(kernel: Kernel, host: str) -> str:
    """Of the main port's ``host`` and the kernel's probe host (when it has a probe port), the one that
    reaches furthest: the details policy must hold on both ports."""
    if kernel.probe_port is not None and is_loopback(host) and not is_loopback(kernel.probe_host):
        return kernel.probe_host
    return host


def details_in_force(kernel: Kernel, host: str) -> tuple[str, str]:
    """The details mode of ``kernel`` served on ``host``, and the start-up line saying which and why.
    Unset details are shown on loopback only: beyond it, anyone who can reach the port would see them."""
    if kernel.details is None and is_loopback(host):
        return "always", f"readiness details: full (details unset and serving on {host}, loopback)"
    if kernel.details is None:
        return "never", (
            f"readiness details: status only (details unset and serving on {host}, beyond loopback; "
            'set details = "always" to show them)'
        )
    shown = {
        "always": "full",
        "never": "status only",
        "token": "full with the bearer token, else status only",
    }
    return kernel.details, f'readiness details: {shown[kernel.details]} (details = "{kernel.details}")'


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def warn_if_details_public(kernel: Kernel, host: str) -> None:
    if kernel.details == "always" and not is_loopback(host):
        _log.warning(
            "serving on %s with details = 'always': subsystems, metrics and errors are visible to "
            "anyone who can reach it; consider details = 'token'",
            host,
        )


def _forget_token() -> None:
    """Takes PHOENIX_TOKEN out of this process's environment once the settings are read, so that neither
    the workers nor the subprocesses of checks inherit it. Its value is overwritten first in the environment
    block the process started with, which forked workers would copy and show in /proc/<pid>/environ."""
    if "PHOENIX_TOKEN" not in os.environ:
        return
    if sys.platform.startswith("linux"):
        prefix = b"PHOENIX_TOKEN="
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
        for i in itertools.count():
            entry = environ[i]
            if entry is None:
                break
            text = ctypes.string_at(entry)
            if text.startswith(prefix):
                ctypes.memset(entry + len(prefix), 0, len(text) - len(prefix))
    del os.environ["PHOENIX_TOKEN"]


def _draining_server(drain_s: float) -> type[Any]:
    """Granian's server, with a drain phase on SIGTERM: the workers are told to answer
    ``/ready`` with 503 at once (``DRAIN_SIGNAL``), keep serving for ``drain_s``, and only then does
    Granian's own graceful shutdown begin. A second signal shuts down at once.

    Signals may arrive while a worker is still starting (building its kernel can take seconds, and a
    failed worker is respawned at any time); each is made safe for that moment here."""
    # Process workers explicitly: the drain signal goes to worker PIDs (Granian picks threads on
    # free-threaded builds, which abi3 wheels do not target).
    from granian.server.mp import MPServer

    class DrainingServer(MPServer):
        _draining = False

        def startup(self, *args: Any, **kwargs: Any) -> None:
            # The drain signal is blocked in this thread from now on, so every worker starts with it
            # blocked too (a forked or spawned process inherits the signal mask; exec keeps it). Sent
            # while a worker is still starting, it waits, pending, instead of killing the worker; the
            # kernel unblocks it in `__rsgi_init__`, once its handler is in place, and drains at once.
            # This process never acts on the signal itself.
            signal.pthread_sigmask(signal.SIG_BLOCK, {DRAIN_SIGNAL})
            super().startup(*args, **kwargs)  # type: ignore[no-untyped-call]

        def _spawn_workers(self, *args: Any, **kwargs: Any) -> None:
            super()._spawn_workers(*args, **kwargs)  # type: ignore[no-untyped-call]
            self._drain_new_workers()

        def _respawn_workers(self, *args: Any, **kwargs: Any) -> None:
            super()._respawn_workers(*args, **kwargs)
            self._drain_new_workers()

        def _drain_new_workers(self) -> None:
            # A worker started after the drain began (or while SIGTERM was being handled) drains too.
            if self._draining:
                self._tell_workers_to_drain()

        def _tell_workers_to_drain(self) -> None:
            for worker in self.wrks:
                if worker.inner.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.inner.pid, DRAIN_SIGNAL)

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            if os.getpid() != self.pid:
                # A forked worker inherits this handler and runs it until Granian installs the
                # worker's own, after the kernel is built: the stop would be swallowed, and the
                # server would wait for that worker for ever. A worker still starting has served
                # nothing: it leaves at once on SIGTERM (the server's stop) and ignores SIGINT (Ctrl-C
                # reaches the server too, which then stops it with SIGTERM).
                if args and args[0] == signal.SIGTERM:
                    os._exit(0)
                return
            # Only SIGTERM (an orchestrator's stop) drains. SIGINT is a person at a terminal: Ctrl-C
            # reaches the workers too, which stop at once, so draining would only delay the exit.
            terminated = bool(args) and args[0] == signal.SIGTERM
            if self._draining or drain_s <= 0 or not terminated:
                super().signal_handler_interrupt(*args, **kwargs)  # type: ignore[no-untyped-call]
                return
            self._draining = True
            self._tell_workers_to_drain()
            _log.info("draining for %d ms before shutting down", round(drain_s * 1000))
            timer = threading.Timer(drain_s, super().signal_handler_interrupt)
            timer.daemon = True
            timer.start()

    return DrainingServer


def _stop_before_serving(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(settings: Settings) -> int:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LOGGING_CONFIG, LogLevels

    if settings.app is None and settings.workers > 1:
        raise ConfigError(
            "invalid value for workers: the default kernel's store belongs to one process; "
            "use workers = 1, or serve your own --app"
        )
    # Until Granian installs its own handlers, a stop (SIGTERM) while --app loads here is a clean exit.
    signal.signal(signal.SIGTERM, _stop_before_serving)
    kernel = served_kernel(settings)  # fail here, with exit status 2, rather than in every worker
    if kernel.probe_port == 0 and settings.workers > 1:
        raise ConfigError(
            "invalid value for probe_port: 0 would give each worker a free port of its own; "
            "name one port for all workers"
        )
    if kernel.probe_port == settings.port != 0:
        # Both listeners bind with SO_REUSEPORT, so the kernel would split connections between them.
        raise ConfigError(f"invalid value for probe_port: {settings.port} is the main port (port) too")
    configure(settings.log_level)
    exposed = exposed_host(kernel, settings.host)
    _log.info("%s", details_in_force(kernel, exposed)[1])
    warn_if_details_public(kernel, exposed)
    if kernel.probe_port is not None:
        # Each worker opens the listener when its kernel starts; a port of 0 is chosen there.
        shown = _address(kernel.probe_host, kernel.probe_port)
        _log.info("probes on %s%s", shown, " (a free port)" if kernel.probe_port == 0 else "")
    try:
        import uvloop  # noqa: F401

        loop = Loops.uvloop
    except ImportError:
        loop = Loops.auto
    _draining_server(kernel.shutdown_drain_ms / 1000)(
        "phoenix.cli:worker_kernel",  # named in the process title; the loader below builds the kernel
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        workers=settings.workers,
        loop=loop,
        http=HTTPModes(settings.http),
        websockets=False,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=dictconfig(settings.log_level, base=LOGGING_CONFIG),
        # A worker that dies (the OOM killer, a crash) is replaced at once while the others serve; one
        # that dies again within 5.5 s of its respawn stops the server (Granian's crash-loop guard).
        respawn_failed_workers=True,
    ).serve(target_loader=functools.partial(worker_kernel, settings), wrap_loader=False)
    return 0


async def _check_once(kernel: Kernel) -> dict[str, Any]:
    kernel.start()
    # A start-up that never finishes is judged as it stands: its subsystems report "initialising".
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(kernel.wait_initialised(), CHECK_STARTUP_WAIT_S)
    return await kernel.check()


class _NoAnswer(Exception):
    """``phoenix check`` reached no readiness report at a server's URL (the message says why)."""


def _server_url(settings: Settings) -> str | None:
    """Where ``phoenix serve`` with these settings answers probes over HTTP/1.1: its probe listener if it
    has one, else its main port. None when that took whichever port was free (port 0): there is no
    finding it again. A wildcard bind is reached on loopback."""
    if settings.probe_port:
        host, port = settings.probe_host, settings.probe_port
    elif settings.port:
        host, port = settings.host, settings.port
    else:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{_address(host, port)}"


def _ask_server(url: str, token: str | None) -> tuple[bool, dict[str, Any]]:
    """The readiness of the server at ``url`` (its ``/ready`` answer: 200 ready, 503 not) and its report.

    ConnectionRefusedError when nothing listens there; _NoAnswer when it gives no readiness report.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid value for --url: {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"invalid value for --url: {url!r} is not an http:// or https:// URL")
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname, port, timeout=CHECK_ANSWER_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request("GET", parts.path.rstrip("/") + "/ready", headers=headers)
        response = connection.getresponse()
        body = response.read()
    except ConnectionRefusedError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise _NoAnswer(f"no answer from {url}: {exc or type(exc).__name__}") from None
    finally:
        connection.close()
    try:
        report = json.loads(body)
    except ValueError:
        report = None
    if response.status not in (200, 503) or not isinstance(report, dict) or "status" not in report:
        raise _NoAnswer(f"{url} answered HTTP {response.status}, not a Phoenix readiness report")
    return response.status == 200, report


def _check(settings: Settings, url: str | None) -> int:
    """Asks the server at ``url``, else at the configured probe port or host and port; only when nothing
    listens there (no server holds the kernel) is the kernel evaluated here, in this process."""
    configure(settings.log_level)
    answer: tuple[bool, dict[str, Any]] | None = None
    target = _server_url(settings) if url is None else url
    try:
        if target is not None:
            answer = _ask_server(target, settings.token)
    except ConnectionRefusedError:
        if url is not None:
            print(f"phoenix: no server answers at {url} (connection refused)", file=sys.stderr)
            return 2
    except _NoAnswer as exc:
        # This check speaks HTTP/1.1 only, which a main port serving HTTP/2 only resets.
        http2_only = url is None and not settings.probe_port and settings.http == "2"
        hint = '; with http = "2" the main port speaks HTTP/2 only: set probe_port' if http2_only else ""
        print(f"phoenix: {exc}{hint}", file=sys.stderr)
        return 2
    if answer is None:
        kernel = load_kernel(settings)
        kernel.probe_port = None  # a one-off check answers here, and listens nowhere
        report = asyncio.run(_check_once(kernel))
        answer = report["status"] == "ready", report
    ready, report = answer
    print(json.dumps(report, indent=2))
    return 0 if ready else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phoenix", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"phoenix {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve /health and /ready over HTTP")
    check = commands.add_parser(
        "check", help="check readiness once, asking the running server if any; exit 0 when ready, 1 when not"
    )
    for command in (serve, check):
        command.add_argument("--config", help="TOML config file (default: ./phoenix.toml if present)")
    # Options are generated from the one table of keys, so the CLI cannot drift from the config.
    helps = {key.name: key.help for key in KEYS}
    for name in ("app", "data_dir"):
        for command in (serve, check):
            command.add_argument(f"--{name.replace('_', '-')}", dest=name, help=helps[name])
    for name in ("host", "port", "http", "workers", "probe_port", "probe_host"):
        serve.add_argument(f"--{name.replace('_', '-')}", dest=name, help=helps[name])
    check.add_argument(
        "--url",
        help="ask the server at this URL (e.g. http://127.0.0.1:5001) instead of the configured host and "
        "port; exit 2 if none answers there",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    given = {key.name: getattr(args, key.name) for key in KEYS if getattr(args, key.name, None) is not None}
    try:
        settings = load_settings(given, config_file=args.config)
        _forget_token()
        if args.command == "serve":
            return _serve(settings)
        return _check(settings, args.url)
    except ConfigError as exc:
        print(f"phoenix: {exc}", file=sys.stderr)
        return 2
