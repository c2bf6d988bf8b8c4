"""Phoenix configuration: every setting is defined once, in :class:`Settings`.

Each field of :class:`Settings` carries its type (the annotation), its default,
its validator and its help text (the field metadata). :data:`KEYS` is derived
from those fields, and everything else -- environment variable names, file
parsing, ``to_env``, ``describe_keys`` -- is derived from :data:`KEYS`.

Sources, highest precedence first::

    command line  >  environment (PHOENIX_<KEY>)  >  TOML config file  >  defaults

The config file is the one named by ``--config`` (``config_file``), else by
``PHOENIX_CONFIG``, else ``./phoenix.toml`` if that exists. Its keys sit at the
top level or under a ``[phoenix]`` table.

This module imports nothing from the rest of the ``phoenix`` package, so it can
be loaded on its own (for example before the Rust extension is built).
"""

from __future__ import annotations

import difflib
import keyword
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "KEYS",
    "LOG_LEVELS",
    "ConfigError",
    "Key",
    "Settings",
    "describe_keys",
    "load_settings",
]

ENV_PREFIX: Final = "PHOENIX_"
CONFIG_ENV_VAR: Final = "PHOENIX_CONFIG"
DEFAULT_CONFIG_FILE: Final = "phoenix.toml"
FILE_TABLE: Final = "phoenix"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_BOOL_PAIRS: Final = (("true", "false"), ("yes", "no"), ("on", "off"), ("1", "0"))
_BOOL_WORDS: Final = {
    word: value for pair in _BOOL_PAIRS for word, value in zip(pair, (True, False), strict=True)
}
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_SUPPORTED_TYPES: Final = (str, int, bool, Path)


class ConfigError(Exception):
    """Invalid configuration.

    The message is one line that names the offending key or file, e.g.
    ``invalid value for port (from PHOENIX_PORT): expected an integer from 0 to
    65535, got 'abc'`` or ``cannot read config file 'x.toml': No such file or
    directory``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


class _Invalid(Exception):
    """Raised by validators; turned into a ConfigError naming key and source."""


# ---------------------------------------------------------------------------
# Validators. Each takes an already-typed value and returns it (normalised) or
# raises _Invalid. The text shown after "expected" is declared next to the key.
# ---------------------------------------------------------------------------


def _int_range(lo: int, hi: int | None = None) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < lo or (hi is not None and value > hi):
            raise _Invalid
        return value

    return check


def _non_empty(value: str) -> str:
    if not value:
        raise _Invalid
    return value


def _log_level(value: str) -> str:
    lowered = value.lower()
    if lowered not in LOG_LEVELS:
        raise _Invalid
    return lowered


def _dotted_name(text: str) -> bool:
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in text.split("."))


def _app_ref(value: str) -> str:
    module, sep, attr = value.partition(":")
    if not sep or not _dotted_name(module) or not _dotted_name(attr):
        raise _Invalid
    return value


DETAILS_MODES: Final = ("always", "never", "token")


def _details(value: str) -> str:
    if value not in DETAILS_MODES:
        raise _Invalid
    return value


def _meta(
    help: str,
    *,
    expect: str = "",
    check: Callable[[Any], Any] | None = None,
) -> dict[str, object]:
    """Field metadata of one setting: its help text, its validator and the text
    describing valid values (``expect``; derived from the type when empty)."""
    return {"help": help, "expect": expect, "check": check}


@dataclass(frozen=True)
class Settings:
    """Resolved Phoenix configuration. This class is the single table of keys.

    Construction validates and normalises every field (``Settings(port=-1)``
    raises :class:`ConfigError`), so a ``Settings`` instance is always valid.
    """

    app: str | None = field(
        default=None,
        metadata=_meta(
            "'module:attr' naming a Kernel or a zero-argument function returning one; "
            "unset means the Phoenix default kernel.",
            expect="'module.path:attr.path'",
            check=_app_ref,
        ),
    )
    host: str = field(
        default="127.0.0.1",
        metadata=_meta(
            "Interface the HTTP server binds to.",
            expect="a non-empty string",
            check=_non_empty,
        ),
    )
    port: int = field(
        default=5001,
        metadata=_meta(
            "TCP port the HTTP server listens on (0 picks a free port).",
            expect="an integer from 0 to 65535",
            check=_int_range(0, 65535),
        ),
    )
    workers: int = field(
        default=1,
        metadata=_meta(
            "Number of server worker processes.",
            expect="an integer >= 1",
            check=_int_range(1),
        ),
    )
    data_dir: Path = field(
        default=Path("phoenix-data"),
        metadata=_meta(
            "Directory where Phoenix keeps its data.",
        ),
    )
    health_ttl_ms: int = field(
        default=100,
        metadata=_meta(
            "How long a health result is cached, in milliseconds.",
            expect="an integer >= 0",
            check=_int_range(0),
        ),
    )
    ready_ttl_ms: int = field(
        default=100,
        metadata=_meta(
            "How long a readiness result is cached, in milliseconds.",
            expect="an integer >= 0",
            check=_int_range(0),
        ),
    )
    check_timeout_ms: int = field(
        default=500,
        metadata=_meta(
            "Default timeout of one subsystem check, in milliseconds.",
            expect="an integer > 0",
            check=_int_range(1),
        ),
    )
    request_log: bool = field(
        default=True,
        metadata=_meta(
            "Log method, path, status and latency of each request to the 'phoenix.api' logger.",
        ),
    )
    details: str = field(
        default="always",
        metadata=_meta(
            "Who sees subsystems, metrics and errors in readiness answers: always, never, or token "
            "(only requests with 'Authorization: Bearer <token>').",
            expect="one of " + ", ".join(DETAILS_MODES),
            check=_details,
        ),
    )
    token: str | None = field(
        default=None,
        metadata=_meta(
            "The bearer token for details = 'token'.",
            expect="a non-empty string",
            check=_non_empty,
        ),
    )
    shutdown_drain_ms: int = field(
        default=5000,
        metadata=_meta(
            "On SIGTERM, how long /ready answers 503 'draining' while requests are still served, "
            "before the server shuts down, in milliseconds.",
            expect="an integer >= 0",
            check=_int_range(0),
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_meta(
            "Log level: " + ", ".join(LOG_LEVELS) + " (case-insensitive).",
            expect="one of " + ", ".join(LOG_LEVELS),
            check=_log_level,
        ),
    )

    def __post_init__(self) -> None:
        for key in KEYS:
            raw = getattr(self, key.name)
            if raw is None and key.optional:
                continue
            value = _convert(key, raw, source="Settings()", text_ok=False)
            if value is not raw:
                object.__setattr__(self, key.name, value)
        if self.details == "token" and not self.token:
            raise ConfigError("invalid value for details: 'token' needs token (PHOENIX_TOKEN) to be set")

    def to_env(self) -> dict[str, str]:
        """``PHOENIX_*`` variables for every key whose value is not None.

        ``load_settings(env=s.to_env()) == s`` -- used to hand the resolved
        configuration to server worker processes.
        """
        env: dict[str, str] = {}
        for key in KEYS:
            value = getattr(self, key.name)
            if value is not None:
                env[key.env_var] = _to_text(value)
        return env


# ---------------------------------------------------------------------------
# The key table, derived from Settings.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One configuration key, as declared on :class:`Settings`."""

    name: str
    type: type  # one of str, int, bool, Path
    optional: bool  # True when None is a valid value (only as the default)
    default: object
    help: str
    expect: str  # describes valid values, after "expected" in error messages
    check: Callable[[Any], Any]

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _default_expect(kind: type) -> str:
    if kind is int:
        return "an integer"
    if kind is bool:
        return "a boolean (" + ", ".join("/".join(pair) for pair in _BOOL_PAIRS) + ")"
    if kind is Path:
        return "a non-empty path"
    return "a string"


def _build_keys() -> tuple[Key, ...]:
    hints = typing.get_type_hints(Settings)
    keys: list[Key] = []
    for f in fields(Settings):
        hint = hints[f.name]
        optional = False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            optional = len(members) < len(typing.get_args(hint))
            if len(members) != 1:
                raise TypeError(f"setting {f.name}: unsupported type {hint!r}")
            hint = members[0]
        if hint not in _SUPPORTED_TYPES:
            raise TypeError(f"setting {f.name}: unsupported type {hint!r}")
        check = f.metadata["check"]
        keys.append(
            Key(
                name=f.name,
                type=hint,
                optional=optional,
                default=f.default,
                help=f.metadata["help"],
                expect=f.metadata["expect"] or _default_expect(hint),
                check=check if check is not None else (lambda value: value),
            )
        )
    if any(key.env_var == CONFIG_ENV_VAR for key in keys):
        raise TypeError(f"a setting may not be named like {CONFIG_ENV_VAR}")
    return tuple(keys)


KEYS: Final[tuple[Key, ...]] = _build_keys()
"""Every configuration key, in declaration order."""

_KEYS_BY_NAME: Final = {key.name: key for key in KEYS}


def describe_keys() -> list[tuple[str, str, str]]:
    """``(key, default repr, help)`` for every key, for README/--help generation.

    Path defaults are shown as the repr of their string form (``'phoenix-data'``).
    """
    return [(key.name, _default_repr(key.default), key.help) for key in KEYS]


def _default_repr(value: object) -> str:
    if isinstance(value, Path):
        return repr(os.fspath(value))
    return repr(value)


# ---------------------------------------------------------------------------
# Conversion of raw values from one source into typed, validated values.
# ---------------------------------------------------------------------------


def _quote(text: str) -> str:
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


def _to_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return os.fspath(value)
    return str(value)


def _typed(key: Key, raw: object) -> object:
    """Accept ``raw`` if it already has the key's Python type (TOML values, typed CLI values)."""
    if key.type is bool:
        if isinstance(raw, bool):
            return raw
    elif key.type is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
    elif key.type is Path:
        text = os.fspath(raw) if isinstance(raw, os.PathLike) else raw
        if isinstance(text, str) and text:
            return Path(text)
    elif isinstance(raw, str):
        return raw
    raise _Invalid


def _parse_text(key: Key, raw: str) -> object:
    """Parse a string (environment variable or string CLI value) strictly."""
    if key.type is bool:
        try:
            return _BOOL_WORDS[raw.lower()]
        except KeyError:
            raise _Invalid from None
    if key.type is int:
        if not _INT_RE.fullmatch(raw):
            raise _Invalid
        return int(raw)
    return _typed(key, raw)


def _convert(key: Key, raw: object, *, source: str, text_ok: bool) -> object:
    """Typed, validated value of ``key`` from ``raw`` (given by ``source``).

    With ``text_ok`` a string is parsed as in the environment (``"8000"`` for an
    int, ``"yes"`` for a bool); without it the value must already have the right
    type (TOML values, ``Settings(...)`` arguments).
    """
    try:
        value = _parse_text(key, raw) if text_ok and isinstance(raw, str) else _typed(key, raw)
        return key.check(value)
    except _Invalid:
        expect = key.expect
        if key.type is bool and not text_ok:
            expect = "a boolean (true or false)"
        raise ConfigError(
            f"invalid value for {key.name} (from {source}): expected {expect}, got {raw!r}"
        ) from None


# ---------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------


def _config_path(config_file: str | os.PathLike[str] | None, env: Mapping[str, str]) -> str | None:
    """Path of the config file to read, or None when there is none.

    A file named by ``--config`` or ``PHOENIX_CONFIG`` must be readable;
    ``./phoenix.toml`` is used only if it exists (and must then be readable).
    """
    if config_file is not None:
        return os.fspath(config_file)
    if CONFIG_ENV_VAR in env:
        return env[CONFIG_ENV_VAR]
    if os.path.exists(DEFAULT_CONFIG_FILE):
        return DEFAULT_CONFIG_FILE
    return None


def _read_file(path: str) -> dict[str, object]:
    """Raw setting values from the TOML file at ``path``."""
    shown = _quote(path)
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in config file {shown}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"invalid TOML in config file {shown}: not UTF-8 ({exc})") from None

    where = f"config file {shown}"
    table: dict[str, Any] = document
    if FILE_TABLE in document:
        table = document[FILE_TABLE]
        if not isinstance(table, dict):
            raise ConfigError(f"invalid config file {shown}: '{FILE_TABLE}' must be a table")
        where = f"[{FILE_TABLE}] table of config file {shown}"
        # Other top-level entries belong to other tools, but a Phoenix key
        # there is ignored by the rule above: refuse rather than ignore it.
        for name in document:
            if name in _KEYS_BY_NAME:
                raise ConfigError(
                    f"key {_quote(name)} in config file {shown} is outside the "
                    f"[{FILE_TABLE}] table; move it into [{FILE_TABLE}]"
                )
    for name in table:
        if name not in _KEYS_BY_NAME:
            close = difflib.get_close_matches(name, _KEYS_BY_NAME, n=1)
            hint = f" (did you mean {_quote(close[0])}?)" if close else ""
            raise ConfigError(f"unknown key {_quote(name)} in {where}{hint}")
    return dict(table)


def load_settings(
    cli: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Resolve the configuration: CLI > environment > config file > defaults.

    ``cli`` holds only the options the user actually gave, by key name (None
    values are ignored); values may be typed (``8000``) or strings (``"8000"``).
    ``env`` defaults to ``os.environ``; ``PHOENIX_<KEY>`` variables are read and
    other ``PHOENIX_*`` variables are ignored. ``config_file``, when given, is
    the CLI ``--config`` and overrides ``PHOENIX_CONFIG``.

    Every value given by any source is validated, even if a higher-precedence
    source overrides it. Raises :class:`ConfigError` on any invalid input.
    """
    if env is None:
        env = os.environ
    values: dict[str, object] = {}

    path = _config_path(config_file, env)
    if path is not None:
        source = f"config file {_quote(path)}"
        for name, raw in _read_file(path).items():
            values[name] = _convert(_KEYS_BY_NAME[name], raw, source=source, text_ok=False)

    for key in KEYS:
        if key.env_var in env:
            values[key.name] = _convert(key, env[key.env_var], source=key.env_var, text_ok=True)

    for name, raw in (cli or {}).items():
        if raw is None:
            continue
        cli_key = _KEYS_BY_NAME.get(name)
        if cli_key is None:
            raise ConfigError(f"unknown setting {_quote(name)} (from command line)")
        values[name] = _convert(cli_key, raw, source="command line", text_ok=True)

    return Settings(**values)  # type: ignore[arg-type]
