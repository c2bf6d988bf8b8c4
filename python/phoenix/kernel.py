"""The Python face of the kernel: registering subsystems and serving them over RSGI or ASGI."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import _core
from .app import ASGIApp, RSGIHandler, rsgi_handler
from .config import DEFAULTS, is_loopback

# The signal that makes a served worker start draining; Granian itself uses SIGINT, SIGTERM, SIGHUP.
DRAIN_SIGNAL = signal.SIGUSR1

Metric = float | bool
CheckFunc = Callable[[], Metric | Awaitable[Metric]]
F = TypeVar("F", bound=CheckFunc)


#: The options every dependency check takes besides its kind's keys.
DEPENDENCY_OPTIONS = ("threshold", "warn_threshold", "timeout_ms", "interval_ms", "failures_before_unready")


def _number(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, not {type(value).__name__}")
    return float(value)


def _whole(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    # Positive, and small enough for the core's integers: a bad value is named here, not overflowed there.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
        raise ValueError(f"{key} must be a whole number from 1 to {2**32 - 1}")
    return value


def _settings_json(settings: dict[str, Any]) -> str:
    """A kind's keys as the core takes them; None means unset, a path is its text."""
    plain = {
        key: os.fspath(value) if isinstance(value, os.PathLike) else value
        for key, value in settings.items()
        if value is not None
    }
    for key, value in plain.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                f"{key}: {type(value).__name__} is not a setting (text, number, boolean or list)"
            ) from None
    return json.dumps(plain)


def _wake_for_early_signals() -> None:
    """Run once the worker's loop runs. Granian installs the worker's SIGTERM and SIGINT handlers on
    the loop before calling ``__rsgi_init__``, and uvloop only records a signal that arrives before it
    runs: it acts on it when woken through the signal wakeup fd, which nothing else would do, and the
    worker would miss the server's stop for good. A byte on that fd (a 0, which names no signal) wakes
    it for whatever it recorded; the asyncio loop ignores it."""
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)
    if wakeup_fd != -1:
        with contextlib.suppress(BlockingIOError):  # full: the loop is being woken anyway
            os.write(wakeup_fd, b"\0")


class Kernel:
    """A set of subsystems, checked concurrently, served at ``/health`` and ``/ready``.

    An empty kernel is ready. Register checks with :meth:`subsystem`; serve the kernel with Granian
    (it is an RSGI application) or mount :meth:`asgi` in any ASGI framework.
    """

    def __init__(
        self,
        *,
        health_ttl_ms: int = DEFAULTS.health_ttl_ms,
        ready_ttl_ms: int = DEFAULTS.ready_ttl_ms,
        check_timeout_ms: int = DEFAULTS.check_timeout_ms,
        request_log: bool = DEFAULTS.request_log,
        details: str | None = DEFAULTS.details,
        token: str | None = DEFAULTS.token,
        shutdown_drain_ms: int = DEFAULTS.shutdown_drain_ms,
        probe_port: int | None = DEFAULTS.probe_port,
        probe_host: str = DEFAULTS.probe_host,
        live_stale_ms: int = DEFAULTS.live_stale_ms,
        ready_stale_ms: int = DEFAULTS.ready_stale_ms,
        metrics: bool = DEFAULTS.metrics,
        metrics_public: bool = DEFAULTS.metrics_public,
    ) -> None:
        # Unset details show everything until a server settles them for the address it serves on.
        self._core = _core.Core(
            health_ttl_ms,
            ready_ttl_ms,
            check_timeout_ms,
            details or "always",
            token,
            live_stale_ms,
            ready_stale_ms,
            metrics,
        )
        self.metrics_public = metrics_public
        self._details = details
        self._token = token
        self.shutdown_drain_ms = shutdown_drain_ms
        self.request_log = request_log
        #: Where the probe listener answers (see :meth:`start`); settable until the kernel starts.
        self.probe_port = probe_port
        self.probe_host = probe_host
        self._probe_address: tuple[str, int] | None = None
        self._beating_loop: asyncio.AbstractEventLoop | None = None

    @property
    def details(self) -> str | None:
        """Who sees subsystems, metrics and errors in readiness answers: ``"always"``, ``"never"``,
        ``"token"`` (requests bearing the token), or None: unset, which ``phoenix serve`` settles as
        ``"always"`` on loopback and ``"never"`` beyond it, and which means ``"always"`` until then."""
        return self._details

    @details.setter
    def details(self, mode: str) -> None:
        self._core.set_details(mode, self._token)
        self._details = mode

    @property
    def request_log(self) -> bool:
        """Whether each request is logged to ``phoenix.api`` (method, path, status, latency)."""
        return self._request_log

    @request_log.setter
    def request_log(self, enabled: bool) -> None:
        self._request_log = enabled
        # Granian looks the RSGI entry point up on the object it serves; the handler is built for the
        # settings rather than testing them per request.
        self.__rsgi__: RSGIHandler = rsgi_handler(self._core, request_log=enabled)

    @property
    def metrics(self) -> bool:
        """Whether requests and check runs are recorded and served at ``/metrics``."""
        return self._core.metrics

    @metrics.setter
    def metrics(self, enabled: bool) -> None:
        self._core.set_metrics(enabled)
        self.request_log = self._request_log  # the handler times requests only when metrics need it

    @property
    def metrics_public(self) -> bool:
        """Whether ``/metrics`` is served without the token when ``details`` is ``"token"``."""
        return self._metrics_public

    @metrics_public.setter
    def metrics_public(self, public: bool) -> None:
        self._core.set_metrics_public(public)
        self._metrics_public = public

    def subsystem(
        self,
        name: str,
        *,
        threshold: float,
        warn_threshold: float | None = None,
        timeout_ms: int | None = None,
        interval_ms: int | None = None,
        failures_before_unready: int = 1,
    ) -> Callable[[F], F]:
        """Registers a check. It returns a float metric, or a bool (``True`` means 1.0).

        - The subsystem passes when the metric is above ``warn_threshold`` (or ``threshold`` when
          there is none), warns when it is above ``threshold`` only, and fails otherwise. Warn is
          still ready.
        - ``async def`` checks run on the serving event loop; plain functions run in a thread. A
          check is abandoned (reported as timed out) after ``timeout_ms``, default the kernel's
          ``check_timeout_ms``, and a run that is still pending is never started again.
        - With ``interval_ms`` the check runs in the background on that period and ``/ready``
          serves its latest result (a round measures it until it has one); otherwise it runs per round.
        - Readiness flips to not-ready after ``failures_before_unready`` failures in a row (earlier
          ones are reported as warn), and back on the first success.
        """

        def register(func: F) -> F:
            is_async = inspect.iscoroutinefunction(func)
            self._core.add_check(
                name,
                func,
                is_async,
                float(threshold),
                timeout_ms,
                None if warn_threshold is None else float(warn_threshold),
                interval_ms,
                failures_before_unready,
            )
            return func

        return register

    def add_dependency(self, name: str, kind: str, **settings: Any) -> None:
        """Adds a native check of a dependency, run in the core without the GIL: ``kind`` is
        ``postgres``, ``redis``, ``http``, ``tcp``, ``disk`` or ``memory``, and ``settings`` are the
        kind's keys (see the ``add_<kind>`` methods) and the options of :data:`DEPENDENCY_OPTIONS`.

        It runs in the background, every ``interval_ms`` (default 1000), and gives up at ``timeout_ms``.
        Unset thresholds take the kind's: connectivity kinds pass at 1.0 and fail with the reason;
        ``disk`` and ``memory`` report the fraction free, failing at 0.05 and warning at 0.10. Raises
        ValueError, naming the key, on a bad kind, key or value.
        """
        options = {key: settings.pop(key) for key in DEPENDENCY_OPTIONS if key in settings}
        self._core.add_dependency(
            name,
            kind,
            _settings_json(settings),
            _number(options, "threshold"),
            _whole(options, "timeout_ms"),
            _number(options, "warn_threshold"),
            _whole(options, "interval_ms"),
            _whole(options, "failures_before_unready") or 1,
        )

    def add_postgres(
        self,
        name: str,
        dsn: str,
        *,
        query: str = "SELECT 1",
        ca_file: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        warn_threshold: float | None = None,
        timeout_ms: int | None = None,
        interval_ms: int | None = None,
        failures_before_unready: int = 1,
    ) -> None:
        """PostgreSQL: runs ``query`` on a kept connection. ``dsn`` is a ``postgresql://`` URL or a
        ``key=value`` string; its ``sslmode`` says whether TLS is used and what is verified, as libpq
        (``prefer`` by default). ``ca_file`` (PEM) is the CA to verify the server against instead of
        the system's roots."""
        self.add_dependency(
            name,
            "postgres",
            dsn=dsn,
            query=query,
            ca_file=ca_file,
            threshold=threshold,
            warn_threshold=warn_threshold,
            timeout_ms=timeout_ms,
            interval_ms=interval_ms,
            failures_before_unready=failures_before_unready,
        )

    def add_redis(
        self,
        name: str,
        url: str,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        warn_threshold: float | None = None,
        timeout_ms: int | None = None,
        interval_ms: int | None = None,
        failures_before_unready: int = 1,
    ) -> None:
        """Redis: ``PING`` answered by ``PONG`` on a kept connection to
        ``redis://[user:password@]host[:port][/db]``, or ``rediss://`` for TLS, verified against the
        system's roots or ``ca_file``'s (PEM)."""
        self.add_dependency(
            name,
            "redis",
            url=url,
            ca_file=ca_file,
            threshold=threshold,
            warn_threshold=warn_threshold,
            timeout_ms=timeout_ms,
            interval_ms=interval_ms,
            failures_before_unready=failures_before_unready,
        )

    def add_http(
        self,
        name: str,
        url: str,
        *,
        method: str = "GET",
        expect_status: Sequence[int | str] = ("2xx",),
        body_contains: str | None = None,
        follow_redirects: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        warn_threshold: float | None = None,
        timeout_ms: int | None = None,
        interval_ms: int | None = None,
        failures_before_unready: int = 1,
    ) -> None:
        """HTTP: ``method`` (GET or HEAD) on an ``http://`` or ``https://`` URL passes when the status is
        in ``expect_status`` (codes and classes such as ``"2xx"``) and the body contains
        ``body_contains``, if given. Redirects are followed (at most 5) only with ``follow_redirects``.
        https is verified against the system's roots, or ``ca_file``'s (PEM)."""
        self.add_dependency(
            name,
            "http",
            url=url,
            method=method,
            expect_status=list(expect_status),
            body_contains=body_contains,
            follow_redirects=follow_redirects,
            ca_file=ca_file,
            threshold=threshold,
            warn_threshold=warn_threshold,
            timeout_ms=timeout_ms,
            interval_ms=interval_ms,
            failures_before_unready=failures_before_unready,
        )

    def add_tcp(
        self,
        name: str,
        host: str,
        port: int,
        *,
        threshold: float | None = None,
        warn_threshold: float | None = None,
        timeout_ms: int | None = None,
        interval_ms: int | None = None,
        failures_before_unready: int = 1,
    ) -> None:
        """TCP: ``host:port`` accepts a connection within the timeout."""
        self.add_dependency(
            name,
            "tcp",
            host=host,
            port=port,
            threshold=threshold,
            warn_threshold=warn_threshold,
            timeout_ms=timeout_ms,
            interval_ms=interval_ms,
            failures_before_unready=failures_before_unready,
        )

    def add_disk(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        threshold: float | None = None,
        warn_threshold: float | None = None,
        timeout_ms: int | None = None,
        interval_ms: int | None = None,
        failures_before_unready: int = 1,
    ) -> None:
        """Disk: the fraction of ``path``'s file system free to unprivileged users (it must exist)."""
        self.add_dependency(
            name,
            "disk",
            path=path,
            threshold=threshold,
            warn_threshold=warn_threshold,
            timeout_ms=timeout_ms,
            interval_ms=interval_ms,
            failures_before_unready=failures_before_unready,
        )

    def add_memory(
        self,
        name: str = "memory",
        *,
        threshold: float | None = None,
        warn_threshold: float | None = None,
        timeout_ms: int | None = None,
        interval_ms: int | None = None,
        failures_before_unready: int = 1,
    ) -> None:
        """Memory: the fraction of this process's cgroup v2 memory limit still free (its own or a parent's),
        or of the host's memory when there is no limit."""
        self.add_dependency(
            name,
            "memory",
            threshold=threshold,
            warn_threshold=warn_threshold,
            timeout_ms=timeout_ms,
            interval_ms=interval_ms,
            failures_before_unready=failures_before_unready,
        )

    def add_ping(self, name: str = "ping") -> None:
        """Adds a native check that always passes (Kubernetes' ``ping``): it proves the core answers."""
        self._core.add_ping(name)

    @property
    def subsystems(self) -> list[str]:
        return self._core.subsystem_names

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Starts the kernel; servers call this for you, and it is idempotent. It starts background work,
        binds ``loop`` (default: the running one) for ``async def`` checks and has it stamp the heartbeat
        that ``/live`` and readiness judge it by, and starts the probe listener when ``probe_port`` is set
        (raising :class:`PhoenixError` when the port cannot be bound)."""
        self._core.start(loop)
        if loop is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        if loop is not None and loop is not self._beating_loop:
            self._beating_loop = loop
            self._beat_on(loop)
        if self.probe_port is not None and self._probe_address is None:
            if self._details is None and not is_loopback(self.probe_host):
                # Unset details are shown on loopback only (as `phoenix serve` settles them), and the
                # probe port reaches beyond it.
                self.details = "never"
            port = self._core.listen(self.probe_host, self.probe_port, self._request_log)
            self._probe_address = (self.probe_host, port)

    def share_metrics(self, port: int) -> None:
        """Publishes this process's metrics to every process serving on ``port`` (the workers of one
        server; ``phoenix serve --workers N`` calls it in each), so that ``/metrics`` answered by any of
        them reports the whole server. Raises :class:`PhoenixError` when the shared board cannot be
        opened."""
        self._core.share_metrics(port)

    def _beat_on(self, loop: asyncio.AbstractEventLoop) -> None:
        beat = self._core.beat

        def tick() -> None:
            beat()
            loop.call_later(_core.HEARTBEAT_PERIOD_S, tick)

        loop.call_soon_threadsafe(tick)

    @property
    def probe_address(self) -> tuple[str, int] | None:
        """Where the probe listener listens, once :meth:`start` has started it."""
        return self._probe_address

    @property
    def initialised(self) -> bool:
        """True once the native subsystems (if any) have finished their background start-up."""
        return self._core.initialised

    async def wait_initialised(self) -> None:
        """Waits for the background start-up begun by :meth:`start`."""
        await self._core.wait_initialised()

    def drain(self) -> None:
        """From now on ``/ready`` answers 503 ``draining``; everything else is served as before. Call
        it when shutdown begins, so load balancers stop sending traffic before the server stops."""
        self._core.drain()

    @property
    def draining(self) -> bool:
        return self._core.draining

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # `phoenix serve` tells its workers that shutdown has begun with DRAIN_SIGNAL, and starts them
        # with that signal blocked (see cli.py), so one sent while this worker was starting is pending.
        # Unblocked with the handler in place, it is handled at once, before the first request. A plain
        # handler rather than the loop's: uvloop dispatches its own only for signals that arrive while
        # it runs, and the drain is a flag, safe to set from any point in the main thread. Unblocked
        # before `start`, so the threads started from here on do not inherit the block.
        signal.signal(DRAIN_SIGNAL, self._drain_on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {DRAIN_SIGNAL})
        loop.call_soon(_wake_for_early_signals)
        self.start(loop)
        # What is alive now (modules, settings, the kernel) lives as long as the worker. Frozen, it is
        # left out of the cyclic GC's full collections, which then walk only what requests allocate:
        # under many concurrent requests those collections were a few percent of the worker's time.
        gc.collect()
        gc.freeze()

    def _drain_on_signal(self, signum: int, frame: object) -> None:
        self.drain()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Worker processes end without running atexit hooks: write out the buffered request log now.
        self._core.flush_log()

    async def check(self) -> dict[str, Any]:
        """Runs every check once, now, bypassing the cache; returns the ``/ready`` body."""
        _ready, _status, body = await self._core.check()
        report: dict[str, Any] = json.loads(body)
        return report

    def asgi(self) -> ASGIApp:
        """This kernel as an ASGI application, e.g. ``app.mount("/probe", kernel.asgi())``."""
        return ASGIApp(self._core, start=self.start, request_log=self._request_log)


class PhoenixKernel(Kernel):
    """The Phoenix AGI kernel: plastic_ltm, triune_conscience and world_model over one data directory."""

    memory: _core.PlasticLtm
    conscience: _core.TriuneConscience
    world: _core.WorldModel

    def __init__(self, data_dir: str | Path = DEFAULTS.data_dir, **options: Any) -> None:
        super().__init__(**options)
        self.data_dir = Path(data_dir)
        self.memory, self.conscience, self.world = self._core.add_phoenix(self.data_dir)


def default_kernel(data_dir: str | Path = DEFAULTS.data_dir, **options: Any) -> PhoenixKernel:
    """The kernel ``phoenix serve`` runs when no ``--app`` is given."""
    return PhoenixKernel(data_dir, **options)
