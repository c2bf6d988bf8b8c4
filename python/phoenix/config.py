"""Phoenix configuration: :data:`KEYS` is the one table of keys, and their one list of defaults.

Sources, highest precedence first::

    command line  >  environment (PHOENIX_<KEY>)  >  TOML config file  >  defaults

The config file is the one named by ``--config``, else by ``PHOENIX_CONFIG``, else ``./phoenix.toml`` if
that exists. Its keys sit at the top level or under a ``[phoenix]`` table.

The file may also declare dependency checks, as ``[[check]]`` tables (``[[phoenix.check]]`` in a file
with a ``[phoenix]`` table), resolved into :attr:`Settings.checks`. They are not scalar keys: not in
:data:`KEYS`, with no environment variable and no command-line flag. ``${VAR}`` in their string values
(all but ``name`` and ``kind``) is replaced by the environment variable ``VAR``; ``$${`` is a literal
``${``. Only what is the config's business is checked here (the shape of each table, its name and kind,
the types of the common keys); the kind's own keys are validated by the Rust core, their one home, when
the check is added to a kernel.

This module imports nothing from the rest of the ``phoenix`` package, so it loads on its own (for example
before the Rust extension is built).
"""

from __future__ import annotations

import difflib
import ipaddress
import keyword
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ENV_PREFIX: Final = "PHOENIX_"
CONFIG_ENV_VAR: Final = "PHOENIX_CONFIG"
DEFAULT_CONFIG_FILE: Final = "phoenix.toml"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
DETAILS_MODES: Final = ("always", "never", "token")
HTTP_MODES: Final = ("auto", "1", "2")

_BOOL_WORDS: Final = dict.fromkeys(("true", "yes", "on", "1"), True) | dict.fromkeys(
    ("false", "no", "off", "0"), False
)
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")


class ConfigError(Exception):
    """Invalid configuration, in one line naming the key or file, e.g. ``invalid value for port (from
    PHOENIX_PORT): expected an integer from 0 to 65535, got 'abc'``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


# Parsers: a value from a source, typed, or ValueError. Text (from the environment or the command line) is
# parsed; a TOML value must already have the type.


def _text(raw: object, _from_text: bool) -> str:
    if not isinstance(raw, str):
        raise ValueError
    return raw


def _integer(raw: object, from_text: bool) -> int:
    if from_text and isinstance(raw, str) and _INT_RE.fullmatch(raw):
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise ValueError


def _boolean(raw: object, from_text: bool) -> bool:
    if from_text and isinstance(raw, str) and raw.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[raw.lower()]
    if isinstance(raw, bool):
        return raw
    raise ValueError


def _path(raw: object, _from_text: bool) -> Path:
    text = os.fspath(raw) if isinstance(raw, os.PathLike) else raw
    if not isinstance(text, str) or not text:
        raise ValueError
    return Path(text)


def _lower(raw: object, from_text: bool) -> str:
    return _text(raw, from_text).lower()


def _http_mode(raw: object, from_text: bool) -> str:
    # `http = 2` in TOML means what `--http 2` does.
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return _lower(raw, from_text)


def _app_ref(value: str) -> bool:
    module, sep, attr = value.partition(":")
    names = [*module.split("."), *attr.split(".")]
    return bool(sep) and all(name.isidentifier() and not keyword.iskeyword(name) for name in names)


@dataclass(frozen=True)
class Key:
    name: str
    default: object
    parse: Callable[[object, bool], Any]
    expect: str  # the valid values, as error messages put it after "expected"
    help: str
    valid: Callable[[Any], bool] = lambda value: True

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


# Every configuration key, in the order of `--help` and the README.
# fmt: off
KEYS: Final = (
    Key("app", None, _text, "'module.path:attr.path'", valid=_app_ref,
        help="'module:attr' naming a Kernel or a zero-argument function returning one; "
        "unset means the Phoenix default kernel."),
    Key("host", "127.0.0.1", _text, "a non-empty string", valid=bool,
        help="Interface the HTTP server binds to."),
    Key("port", 5001, _integer, "an integer from 0 to 65535", valid=lambda n: 0 <= n <= 65535,
        help="TCP port the HTTP server listens on (0 picks a free port)."),
    Key("http", "1", _http_mode, "one of " + ", ".join(HTTP_MODES), valid=HTTP_MODES.__contains__,
        help="HTTP version of the main port: 1 (HTTP/1.1 only), 2 (HTTP/2 cleartext with prior knowledge "
        "only), or auto (either, told apart per connection)."),
    Key("workers", 1, _integer, "an integer >= 1", valid=lambda n: n >= 1,
        help="Number of server worker processes."),
    Key("probe_port", None, _integer, "an integer from 0 to 65535", valid=lambda n: 0 <= n <= 65535,
        help="TCP port of the probe listener, which answers the probes from Rust threads without the "
        "GIL, over HTTP/1.1, HTTP/2 and gRPC (0 picks a free port, one worker only); unset means none."),
    Key("probe_host", "127.0.0.1", _text, "a non-empty string", valid=bool,
        help="Interface the probe listener binds to."),
    Key("data_dir", Path("phoenix-data"), _path, "a non-empty path",
        help="Directory where the default kernel keeps its data."),
    Key("health_ttl_ms", 100, _integer, "an integer >= 0", valid=lambda n: n >= 0,
        help="How long a health result is cached, in milliseconds."),
    Key("ready_ttl_ms", 100, _integer, "an integer >= 0", valid=lambda n: n >= 0,
        help="How long a readiness result is cached, in milliseconds."),
    Key("check_timeout_ms", 500, _integer, "an integer > 0", valid=lambda n: n > 0,
        help="Default timeout of one subsystem check, in milliseconds."),
    Key("live_stale_ms", 5000, _integer, "an integer >= 1", valid=lambda n: n >= 1,
        help="How far behind its heartbeat the event loop may fall before /live answers 503 'stalled', "
        "in milliseconds."),
    Key("ready_stale_ms", 2000, _integer, "an integer >= 1", valid=lambda n: n >= 1,
        help="How far behind its heartbeat the event loop may fall before readiness answers 503 "
        "'stalled', in milliseconds; at most live_stale_ms, so a wedged worker leaves the Service before "
        "it is restarted."),
    Key("metrics", True, _boolean, "a boolean (true/false, yes/no, on/off, 1/0)",
        help="Record requests and check runs and serve them at /metrics (Prometheus or OpenMetrics text; "
        "with details = 'token', the token is required)."),
    Key("metrics_public", False, _boolean, "a boolean (true/false, yes/no, on/off, 1/0)",
        help="Serve /metrics without the token even with details = 'token' (for a scraper that cannot "
        "send one; metrics hold names and numbers, never an error text)."),
    Key("request_log", True, _boolean, "a boolean (true/false, yes/no, on/off, 1/0)",
        help="Log method, path, status and latency of each request to the 'phoenix.api' logger."),
    Key("details", None, _text, "one of " + ", ".join(DETAILS_MODES), valid=DETAILS_MODES.__contains__,
        help="Who sees subsystems, metrics and errors in readiness answers: always, never, or token "
        "(only requests with 'Authorization: Bearer <token>'); unset shows them on loopback only."),
    Key("token", None, _text, "a non-empty string", valid=bool,
        help="The bearer token for details = 'token'."),
    Key("shutdown_drain_ms", 5000, _integer, "an integer >= 0", valid=lambda n: n >= 0,
        help="On SIGTERM, how long /ready answers 503 'draining' while requests are still served, "
        "before the server shuts down, in milliseconds."),
    Key("log_level", "info", _lower, "one of " + ", ".join(LOG_LEVELS), valid=LOG_LEVELS.__contains__,
        help="Log level: " + ", ".join(LOG_LEVELS) + " (case-insensitive)."),
)
# fmt: on

_KEYS_BY_NAME: Final = {key.name: key for key in KEYS}


def _is_number(raw: object) -> bool:
    return isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw)


def _is_positive_integer(raw: object) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool) and raw > 0


# The keys every check takes besides its kind's own (Kernel.subsystem's options): what each must be.
CHECK_COMMON_KEYS: Final[dict[str, tuple[str, Callable[[object], bool]]]] = {
    "threshold": ("a finite number", _is_number),
    "warn_threshold": ("a finite number", _is_number),
    "timeout_ms": ("an integer > 0", _is_positive_integer),
    "interval_ms": ("an integer > 0", _is_positive_integer),
    "failures_before_unready": ("an integer >= 1", _is_positive_integer),
}
# `${VAR}`, the escape `$${` (a literal `${`), or a `${` that starts neither.
_REFERENCE: Final = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")


@dataclass(frozen=True)
class CheckSpec:
    """A ``[[check]]`` table: a dependency check for ``Kernel.add_dependency(name, kind, **settings)``."""

    name: str
    kind: str
    # The kind's keys and the common keys, `${VAR}` expanded. Out of the repr: a DSN may hold a password.
    settings: dict[str, Any] = field(repr=False, hash=False)
    source: str  # where it was declared, for messages: "config file 'phoenix.toml'"


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Its fields are :data:`KEYS`, typed for the type checker."""

    app: str | None
    host: str
    port: int
    http: str
    workers: int
    probe_port: int | None
    probe_host: str
    data_dir: Path
    health_ttl_ms: int
    ready_ttl_ms: int
    check_timeout_ms: int
    live_stale_ms: int
    ready_stale_ms: int
    metrics: bool
    metrics_public: bool
    request_log: bool
    details: str | None
    token: str | None
    shutdown_drain_ms: int
    log_level: str
    # The keys some source set, rather than left to their defaults: a served kernel's own request log,
    # drain and probe listener hold unless one did.
    explicit: frozenset[str] = frozenset()
    # The config file's dependency checks, in the order declared (not a key: see the module docstring).
    checks: tuple[CheckSpec, ...] = ()


def is_loopback(host: str) -> bool:
    """Whether serving on ``host`` reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(values: Mapping[str, object], checks: tuple[CheckSpec, ...] = ()) -> Settings:
    resolved = {key.name: values.get(key.name, key.default) for key in KEYS}
    return Settings(**resolved, explicit=frozenset(values), checks=checks)  # type: ignore[arg-type]


DEFAULTS: Final = _settings({})


def _quote(text: str) -> str:
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


def _shown(raw: object) -> str:
    """A check's value in a message: a number as given, anything else by its type (a string may hold a
    password)."""
    if isinstance(raw, (bool, int, float)) or raw == "":
        return repr(raw)
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "an array"
    return "a table" if isinstance(raw, dict) else "a date or time"


def _convert(key: Key, raw: object, source: str, from_text: bool) -> object:
    try:
        value = key.parse(raw, from_text)
        if key.valid(value):
            return value
    except ValueError:
        pass
    expect = "a boolean (true or false)" if key.parse is _boolean and not from_text else key.expect
    raise ConfigError(f"invalid value for {key.name} (from {source}): expected {expect}, got {raw!r}")


def _read_file(path: str) -> tuple[dict[str, object], list[object]]:
    """The Phoenix table of the TOML file at ``path``, its keys checked, and its ``[[check]]`` entries."""
    shown = _quote(path)
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid TOML in config file {shown}: {exc}") from None
    where, table = f"config file {shown}", document
    if "phoenix" in document:
        table, where = document["phoenix"], f"[phoenix] table of config file {shown}"
        if not isinstance(table, dict):
            raise ConfigError(f"invalid config file {shown}: 'phoenix' must be a table")
        # Other top-level entries belong to other tools; a Phoenix key among them would be ignored.
        outside = sorted(document.keys() & _KEYS_BY_NAME.keys())
        if outside:
            name = _quote(outside[0])
            raise ConfigError(
                f"key {name} in config file {shown} is outside the [phoenix] table; move it there"
            )
        if "check" in document:
            raise ConfigError(
                f"[[check]] in config file {shown} is outside the [phoenix] table; make it [[phoenix.check]]"
            )
    table = dict(table)
    checks = table.pop("check", [])
    if not isinstance(checks, list):
        array = "[[phoenix.check]]" if "phoenix" in document else "[[check]]"
        raise ConfigError(f"invalid {where}: 'check' must be {array} tables, got {_shown(checks)}")
    for name in table:
        if name not in _KEYS_BY_NAME:
            close = difflib.get_close_matches(name, [*_KEYS_BY_NAME, "check"], n=1)
            hint = f" (did you mean {_quote(close[0])}?)" if close else ""
            raise ConfigError(f"unknown key {_quote(name)} in {where}{hint}")
    return table, checks


def _expanded(value: object, env: Mapping[str, str], where: str) -> object:
    """``value`` with each ``${VAR}`` in its strings replaced by the environment variable; ``where``
    begins the message of an error."""
    if isinstance(value, list):
        return [_expanded(item, env, where) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        variable = match[1]
        if variable is None:
            raise ConfigError(f"{where}: '${{' starts no ${{VAR}} reference (write $${{ for a literal '${{')")
        if variable not in env:
            # The variable's name only: never a value, which may be a password.
            raise ConfigError(f"{where}: ${{{variable}}} is not set in the environment")
        return env[variable]

    return _REFERENCE.sub(replace, value)


def _read_checks(entries: list[object], source: str, env: Mapping[str, str]) -> tuple[CheckSpec, ...]:
    """The ``[[check]]`` entries of the config file named in ``source``: shapes, names, kinds and the
    common keys checked, strings expanded. The kind's own keys are the core's to check."""
    checks: list[CheckSpec] = []
    declared: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"invalid [[check]] #{number} in {source}: expected a table, got {_shown(entry)}"
            )
        if "name" not in entry:
            raise ConfigError(f"invalid [[check]] #{number} in {source}: missing key 'name'")
        name = entry["name"]
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"invalid value for name of [[check]] #{number} (from {source}): "
                f"expected a non-empty string, got {_shown(name)}"
            )
        shown = _quote(name)
        if name in declared:
            raise ConfigError(
                f"invalid [[check]] {shown} in {source}: duplicate name (also [[check]] #{declared[name]})"
            )
        declared[name] = number
        if "kind" not in entry:
            raise ConfigError(f"invalid [[check]] {shown} in {source}: missing key 'kind'")
        kind = entry["kind"]
        if not isinstance(kind, str):
            raise ConfigError(
                f"invalid value for kind of [[check]] {shown} (from {source}): expected a string, "
                f"got {_shown(kind)}"
            )
        settings: dict[str, Any] = {}
        for key, raw in entry.items():
            if key in ("name", "kind"):
                continue
            if key in CHECK_COMMON_KEYS:
                expect, valid = CHECK_COMMON_KEYS[key]
                if not valid(raw):
                    raise ConfigError(
                        f"invalid value for {key} of [[check]] {shown} (from {source}): "
                        f"expected {expect}, got {_shown(raw)}"
                    )
            settings[key] = _expanded(raw, env, f"invalid [[check]] {shown} in {source}: {key}")
        checks.append(CheckSpec(name, kind, settings, source))
    return tuple(checks)


def load_settings(
    cli: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Resolves the configuration: command line > environment > config file > defaults.

    ``cli`` holds the options the user gave, by key name (None values are ignored), typed (``8000``) or as
    text (``"8000"``). ``env`` defaults to ``os.environ``. ``config_file`` is ``--config``. Every value
    given is validated, even one a higher source overrides. Raises :class:`ConfigError`.
    """
    env = os.environ if env is None else env
    path = os.fspath(config_file) if config_file is not None else env.get(CONFIG_ENV_VAR)
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    values: dict[str, object] = {}
    checks: tuple[CheckSpec, ...] = ()
    if path is not None:
        source = f"config file {_quote(path)}"
        table, entries = _read_file(path)
        for name, raw in table.items():
            values[name] = _convert(_KEYS_BY_NAME[name], raw, source, False)
        checks = _read_checks(entries, source, env)
    for key in KEYS:
        if key.env_var in env:
            values[key.name] = _convert(key, env[key.env_var], key.env_var, True)
    for name, raw in (cli or {}).items():
        if raw is not None:
            if name not in _KEYS_BY_NAME:
                raise ConfigError(f"unknown setting {_quote(name)} (from command line)")
            values[name] = _convert(_KEYS_BY_NAME[name], raw, "command line", True)
    settings = _settings(values, checks)
    if settings.details == "token" and settings.token is None:
        raise ConfigError("invalid value for details: 'token' needs token (PHOENIX_TOKEN) to be set")
    if settings.ready_stale_ms > settings.live_stale_ms:
        # Readiness must fail first: a wedged worker leaves the Service before liveness restarts it.
        raise ConfigError(
            f"invalid value for ready_stale_ms: {settings.ready_stale_ms} is above live_stale_ms "
            f"({settings.live_stale_ms}); readiness must fail before liveness"
        )
    return settings
