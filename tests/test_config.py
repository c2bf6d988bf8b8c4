"""Tests for phoenix.config: sources, precedence, validation and error messages."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

_CONFIG_PY = Path(__file__).resolve().parents[1] / "python" / "phoenix" / "config.py"


def _load_config_module() -> ModuleType:
    """phoenix.config from this checkout.

    The package's ``__init__`` may need the Rust extension, and an unrelated
    ``phoenix`` distribution may be installed, so fall back to loading the
    file itself when the import fails or finds another file.
    """
    try:
        import phoenix.config as imported
    except ImportError:
        pass
    else:
        if Path(imported.__file__ or "").resolve() == _CONFIG_PY:
            return imported
    name = "_phoenix_config_under_test"
    spec = importlib.util.spec_from_file_location(name, _CONFIG_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses looks the module up while decorating
    spec.loader.exec_module(module)
    return module


config = _load_config_module()
ConfigError: type[Exception] = config.ConfigError
DEFAULTS = config.DEFAULTS
load_settings = config.load_settings


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in an empty directory, so no ./phoenix.toml leaks in."""
    monkeypatch.chdir(tmp_path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _error(call: Callable[[], object]) -> str:
    """The message of the ConfigError raised by ``call``; checks it is one line."""
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert "\r" not in message, message
    return message


# --- defaults ---------------------------------------------------------------


def test_defaults_when_no_source_gives_a_value() -> None:
    settings = load_settings(env={})

    assert settings == DEFAULTS
    assert settings.explicit == frozenset()
    assert settings.app is None
    assert settings.host == "127.0.0.1"
    assert settings.port == 5001
    assert settings.http == "1"
    assert settings.workers == 1
    assert settings.probe_port is None
    assert settings.probe_host == "127.0.0.1"
    assert settings.data_dir == Path("phoenix-data")
    assert settings.health_ttl_ms == 100
    assert settings.ready_ttl_ms == 100
    assert settings.check_timeout_ms == 500
    assert settings.live_stale_ms == 5000
    assert settings.ready_stale_ms == 2000
    assert settings.request_log is True
    assert settings.details is None
    assert settings.token is None
    assert settings.shutdown_drain_ms == 5000
    assert settings.log_level == "info"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PHOENIX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PHOENIX_PORT", "6123")

    assert load_settings().port == 6123


def test_settings_has_one_field_per_key_and_defaults_come_from_the_table() -> None:
    names = [key.name for key in config.KEYS]

    assert [f.name for f in dataclasses.fields(config.Settings)] == [*names, "explicit", "checks"]
    assert {name: getattr(DEFAULTS, name) for name in names} == {key.name: key.default for key in config.KEYS}
    assert {key.name: key.env_var for key in config.KEYS}["data_dir"] == "PHOENIX_DATA_DIR"
    assert all(key.help for key in config.KEYS)


def _readme_config_table() -> list[list[str]]:
    """The rows of the README's configuration table (the one whose header starts with ``key``)."""
    readme = (_CONFIG_PY.parents[2] / "README.md").read_text(encoding="utf-8")
    rows: list[list[str]] = []
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[:3] == ["key", "environment", "default"]:
            rows = [cells]
        elif rows and line.startswith("|"):
            rows.append(cells)
        elif rows:
            break
    return rows[2:]  # past the header and the |---| line


def _readme_default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{os.fspath(value) if isinstance(value, Path) else value}`"


def test_readme_table_lists_every_key_with_its_variable_and_default() -> None:
    documented = [cells[:3] for cells in _readme_config_table()]

    assert documented == [
        [f"`{key.name}`", f"`{key.env_var}`", _readme_default(key.default)] for key in config.KEYS
    ]


def test_kernel_defaults_are_the_tables() -> None:
    from phoenix.kernel import Kernel, PhoenixKernel, default_kernel

    kernel = inspect.signature(Kernel.__init__).parameters
    options = [name for name in kernel if name != "self"]

    assert options == [
        "health_ttl_ms",
        "ready_ttl_ms",
        "check_timeout_ms",
        "request_log",
        "details",
        "token",
        "shutdown_drain_ms",
        "probe_port",
        "probe_host",
        "live_stale_ms",
        "ready_stale_ms",
        "metrics",
        "metrics_public",
    ]
    assert {name: kernel[name].default for name in options} == {
        name: getattr(DEFAULTS, name) for name in options
    }
    for build in (PhoenixKernel.__init__, default_kernel):
        assert inspect.signature(build).parameters["data_dir"].default == DEFAULTS.data_dir


def test_a_checks_common_keys_are_the_kernels_check_options() -> None:
    """A [[check]]'s common keys are validated here and passed on to the kernel by name."""
    from phoenix.kernel import DEPENDENCY_OPTIONS, Kernel

    subsystem = inspect.signature(Kernel.subsystem).parameters
    options = [name for name, p in subsystem.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    assert list(config.CHECK_COMMON_KEYS) == list(DEPENDENCY_OPTIONS) == options
    adders = (Kernel.add_postgres, Kernel.add_redis, Kernel.add_http, Kernel.add_tcp, Kernel.add_disk)
    for add in (*adders, Kernel.add_memory):
        assert list(inspect.signature(add).parameters)[-len(options) :] == options, add.__name__


# --- precedence ---------------------------------------------------------------


def test_cli_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", "port = 1111\n")
    env = {"PHOENIX_PORT": "2222"}

    assert load_settings(cli={"port": 3333}, env=env, config_file=toml).port == 3333
    assert load_settings(env=env, config_file=toml).port == 2222
    assert load_settings(env={}, config_file=toml).port == 1111
    assert load_settings(env={}).port == 5001


def test_precedence_is_resolved_per_key(tmp_path: Path) -> None:
    toml = _write(
        tmp_path / "conf.toml",
        'host = "0.0.0.0"\nport = 1111\nworkers = 2\nlog_level = "error"\n',
    )
    env = {"PHOENIX_PORT": "2222", "PHOENIX_WORKERS": "3"}

    settings = load_settings(cli={"workers": 4}, env=env, config_file=toml)

    assert settings.host == "0.0.0.0"  # file only
    assert settings.port == 2222  # env over file
    assert settings.workers == 4  # cli over env over file
    assert settings.log_level == "error"  # file only
    assert settings.check_timeout_ms == 500  # default


def test_cli_none_values_are_ignored() -> None:
    settings = load_settings(cli={"port": None, "app": None}, env={"PHOENIX_PORT": "7000"})

    assert settings.port == 7000
    assert settings.app is None


def test_cli_accepts_typed_and_string_values() -> None:
    typed = load_settings(cli={"port": 8000, "request_log": False, "data_dir": Path("d")}, env={})
    text = load_settings(cli={"port": "8000", "request_log": "off", "data_dir": "d"}, env={})

    assert typed == text
    assert (text.port, text.request_log, text.data_dir) == (8000, False, Path("d"))


def test_unknown_cli_key_is_an_error() -> None:
    message = _error(lambda: load_settings(cli={"prot": 1}, env={}))

    assert "'prot'" in message


def test_unknown_phoenix_env_vars_are_ignored() -> None:
    settings = load_settings(env={"PHOENIX_PROT": "1", "PHOENIX_": "x", "OTHER": "y"})

    assert settings == DEFAULTS


# --- config file ------------------------------------------------------------------


def test_file_keys_at_top_level(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", 'port = 7001\ndata_dir = "/srv/px"\n')

    settings = load_settings(env={}, config_file=toml)

    assert (settings.port, settings.data_dir) == (7001, Path("/srv/px"))


def test_file_keys_under_phoenix_table(tmp_path: Path) -> None:
    toml = _write(
        tmp_path / "conf.toml",
        '[tool.other]\nport = "not ours"\n\n[phoenix]\nport = 7002\nrequest_log = false\n',
    )

    settings = load_settings(env={}, config_file=toml)

    assert (settings.port, settings.request_log) == (7002, False)


def test_phoenix_key_outside_phoenix_table_is_an_error(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", "port = 1\n\n[phoenix]\nworkers = 2\n")

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert "'port'" in message
    assert str(toml) in message


def test_unknown_file_key_names_key_and_file(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", "prot = 1\n")

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert "'prot'" in message
    assert str(toml) in message


def test_unknown_key_in_phoenix_table_names_key_and_file(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", "[phoenix]\nwrokers = 2\n")

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert "'wrokers'" in message
    assert str(toml) in message


def test_missing_explicit_config_file_names_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"

    from_cli = _error(lambda: load_settings(env={}, config_file=missing))
    from_env = _error(lambda: load_settings(env={"PHOENIX_CONFIG": str(missing)}))

    assert from_cli == f"cannot read config file '{missing}': No such file or directory"
    assert from_env == from_cli


def test_unreadable_config_file_is_an_error(tmp_path: Path) -> None:
    message = _error(lambda: load_settings(env={}, config_file=tmp_path))

    assert message.startswith(f"cannot read config file '{tmp_path}'")


def test_invalid_toml_names_file_and_parser_message(tmp_path: Path) -> None:
    toml = _write(tmp_path / "broken.toml", "port = \n")

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert str(toml) in message
    assert "line 1" in message  # from the TOML parser


def test_non_utf8_config_file_names_file(tmp_path: Path) -> None:
    toml = tmp_path / "latin1.toml"
    toml.write_bytes(b'host = "\xff"\n')

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert str(toml) in message


def test_cli_config_file_overrides_phoenix_config_env(tmp_path: Path) -> None:
    chosen = _write(tmp_path / "chosen.toml", "port = 7003\n")
    env = {"PHOENIX_CONFIG": str(_write(tmp_path / "env.toml", "port = 7004\n"))}

    assert load_settings(env=env, config_file=chosen).port == 7003
    assert load_settings(env=env).port == 7004


def test_cwd_phoenix_toml_is_used_when_present(tmp_path: Path) -> None:
    _write(tmp_path / "phoenix.toml", "[phoenix]\nworkers = 5\n")

    assert load_settings(env={}).workers == 5


def test_no_cwd_phoenix_toml_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write(tmp_path / "phoenix.toml", "workers = 5\n")
    monkeypatch.chdir(elsewhere)

    assert load_settings(env={}).workers == 1


def test_named_config_file_replaces_cwd_phoenix_toml(tmp_path: Path) -> None:
    _write(tmp_path / "phoenix.toml", "workers = 5\nport = 7005\n")
    named = _write(tmp_path / "named.toml", "workers = 6\n")

    settings = load_settings(env={"PHOENIX_CONFIG": str(named)})

    assert (settings.workers, settings.port) == (6, 5001)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('port = "5001"', "'5001'"),
        ("port = true", "True"),
        ("port = 5001.0", "5001.0"),
        ('request_log = "yes"', "'yes'"),
        ("request_log = 1", "1"),
        ("host = 1", "1"),
        ("data_dir = 1", "1"),
    ],
)
def test_file_value_must_have_the_toml_type(tmp_path: Path, line: str, shown: str) -> None:
    toml = _write(tmp_path / "conf.toml", line + "\n")
    key = line.split(" ")[0]

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert message.startswith(f"invalid value for {key} (from config file '{toml}'): ")
    assert message.endswith(f", got {shown}")


# --- environment parsing ---------------------------------------------------------


@pytest.mark.parametrize("raw", ["abc", "12abc", "1.5", "1e3", "", " 12", "1_000", "0x10"])
def test_bad_env_int_names_key_and_variable(raw: str) -> None:
    message = _error(lambda: load_settings(env={"PHOENIX_PORT": raw}))

    assert message == (
        f"invalid value for port (from PHOENIX_PORT): expected an integer from 0 to 65535, got {raw!r}"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_env_bool_words(raw: str, expected: bool) -> None:
    settings = load_settings(env={"PHOENIX_REQUEST_LOG": raw})

    assert settings.request_log is expected


@pytest.mark.parametrize("raw", ["maybe", "", "2", "t", "enabled"])
def test_bad_env_bool_is_an_error(raw: str) -> None:
    message = _error(lambda: load_settings(env={"PHOENIX_REQUEST_LOG": raw}))

    assert message.startswith("invalid value for request_log (from PHOENIX_REQUEST_LOG): ")
    assert message.endswith(f"got {raw!r}")


def test_env_path_is_taken_as_given() -> None:
    settings = load_settings(env={"PHOENIX_DATA_DIR": "../rel/data"})

    assert settings.data_dir == Path("../rel/data")


def test_env_int_accepts_sign_and_leading_zeros() -> None:
    settings = load_settings(env={"PHOENIX_PORT": "+08080", "PHOENIX_WORKERS": "02"})

    assert (settings.port, settings.workers) == (8080, 2)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, 65535])
def test_port_bounds_are_accepted(port: int) -> None:
    assert load_settings(cli={"port": port}, env={}).port == port


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_out_of_range_is_an_error(port: int, tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", f"port = {port}\n")

    from_cli = _error(lambda: load_settings(cli={"port": port}, env={}))
    from_env = _error(lambda: load_settings(env={"PHOENIX_PORT": str(port)}))
    from_file = _error(lambda: load_settings(env={}, config_file=toml))

    assert from_cli == (
        f"invalid value for port (from command line): expected an integer from 0 to 65535, got {port}"
    )
    assert from_env.startswith("invalid value for port (from PHOENIX_PORT): ")
    assert from_file.startswith(f"invalid value for port (from config file '{toml}'): ")


def test_bool_is_not_accepted_as_int_from_cli() -> None:
    message = _error(lambda: load_settings(cli={"workers": True}, env={}))

    assert message.startswith("invalid value for workers (from command line): ")


def test_workers_zero_is_an_error() -> None:
    message = _error(lambda: load_settings(env={"PHOENIX_WORKERS": "0"}))

    assert message == ("invalid value for workers (from PHOENIX_WORKERS): expected an integer >= 1, got '0'")


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("health_ttl_ms", 0, True),
        ("health_ttl_ms", -1, False),
        ("ready_ttl_ms", 0, True),
        ("ready_ttl_ms", -1, False),
        ("check_timeout_ms", 1, True),
        ("check_timeout_ms", 0, False),
    ],
)
def test_millisecond_bounds(key: str, value: int, accepted: bool) -> None:
    def load() -> object:
        return load_settings(cli={key: value}, env={})

    if accepted:
        assert getattr(load(), key) == value
    else:
        assert f"invalid value for {key} " in _error(load)


def test_log_level_is_case_insensitive_and_stored_lower_case() -> None:
    assert load_settings(env={"PHOENIX_LOG_LEVEL": "WARNING"}).log_level == "warning"
    assert load_settings(cli={"log_level": "Debug"}, env={}).log_level == "debug"


def test_bad_log_level_is_an_error() -> None:
    message = _error(lambda: load_settings(env={"PHOENIX_LOG_LEVEL": "verbose"}))

    assert message == (
        "invalid value for log_level (from PHOENIX_LOG_LEVEL): "
        "expected one of debug, info, warning, error, got 'verbose'"
    )


def test_empty_host_is_an_error() -> None:
    assert "invalid value for host " in _error(lambda: load_settings(env={"PHOENIX_HOST": ""}))


@pytest.mark.parametrize("app", ["myapp:kernel", "pkg.mod:make_kernel", "a.b.c:obj.attr"])
def test_app_in_module_attr_form_is_accepted(app: str) -> None:
    assert load_settings(env={"PHOENIX_APP": app}).app == app


@pytest.mark.parametrize(
    "app",
    ["myapp", "myapp:", ":kernel", "a..b:c", "a:b:c", "a b:c", "1mod:k", "mod:k.", "class:k", ""],
)
def test_bad_app_form_is_an_error(app: str) -> None:
    message = _error(lambda: load_settings(env={"PHOENIX_APP": app}))

    assert message == (
        f"invalid value for app (from PHOENIX_APP): expected 'module.path:attr.path', got {app!r}"
    )


def test_error_message_stays_on_one_line_for_multiline_values(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", "host = '''\nbad\n'''\nprot = 1\n")

    from_env = _error(lambda: load_settings(env={"PHOENIX_APP": "a\nb:c"}))
    from_file = _error(lambda: load_settings(env={}, config_file=toml))

    assert "'a\\nb:c'" in from_env
    assert "'prot'" in from_file


def test_config_file_name_with_newline_is_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "odd\nname.toml"

    message = _error(lambda: load_settings(env={}, config_file=odd))

    assert "odd\\nname.toml" in message


def test_config_error_message_is_forced_onto_one_line() -> None:
    assert str(ConfigError("first\nsecond")) == "first second"


# --- what a source set, handed to workers --------------------------------------------------------------


def test_explicit_names_the_keys_some_source_set(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", "port = 1111\n")

    settings = load_settings(
        cli={"host": "0.0.0.0", "app": None}, env={"PHOENIX_WORKERS": "2"}, config_file=toml
    )

    assert settings.explicit == {"host", "workers", "port"}
    assert load_settings(env={"PHOENIX_SHUTDOWN_DRAIN_MS": "5000"}).explicit == {"shutdown_drain_ms"}


def test_settings_survive_pickling_for_spawned_workers() -> None:
    settings = load_settings(env={"PHOENIX_DETAILS": "token", "PHOENIX_TOKEN": "s3cret", "PHOENIX_PORT": "0"})

    assert pickle.loads(pickle.dumps(settings)) == settings


# --- the probe listener, the heartbeat and HTTP/2 -------------------------------------------------------


def test_probe_heartbeat_and_http_keys_from_every_source(tmp_path: Path) -> None:
    toml = _write(
        tmp_path / "conf.toml",
        '[phoenix]\nprobe_port = 9101\nprobe_host = "0.0.0.0"\nlive_stale_ms = 8000\n'
        'ready_stale_ms = 3000\nhttp = "auto"\n',
    )
    env = {"PHOENIX_PROBE_PORT": "9102", "PHOENIX_LIVE_STALE_MS": "7000", "PHOENIX_HTTP": "2"}

    from_file = load_settings(env={}, config_file=toml)
    from_env = load_settings(env=env, config_file=toml)
    from_cli = load_settings(cli={"probe_port": "9103", "http": "1"}, env=env, config_file=toml)

    assert (from_file.probe_port, from_file.probe_host, from_file.http) == (9101, "0.0.0.0", "auto")
    assert (from_file.live_stale_ms, from_file.ready_stale_ms) == (8000, 3000)
    assert (from_env.probe_port, from_env.live_stale_ms, from_env.http) == (9102, 7000, "2")
    assert (from_cli.probe_port, from_cli.http) == (9103, "1")
    assert from_cli.explicit >= {"probe_port", "probe_host", "live_stale_ms", "ready_stale_ms", "http"}


@pytest.mark.parametrize("port", [0, 65535])
def test_probe_port_bounds_are_accepted(port: int) -> None:
    assert load_settings(env={"PHOENIX_PROBE_PORT": str(port)}).probe_port == port


@pytest.mark.parametrize(
    ("variable", "raw", "expect"),
    [
        ("PHOENIX_PROBE_PORT", "70000", "an integer from 0 to 65535"),
        ("PHOENIX_PROBE_PORT", "-1", "an integer from 0 to 65535"),
        ("PHOENIX_PROBE_PORT", "", "an integer from 0 to 65535"),
        ("PHOENIX_PROBE_HOST", "", "a non-empty string"),
        ("PHOENIX_LIVE_STALE_MS", "0", "an integer >= 1"),
        ("PHOENIX_READY_STALE_MS", "0", "an integer >= 1"),
        ("PHOENIX_READY_STALE_MS", "1.5", "an integer >= 1"),
        ("PHOENIX_HTTP", "3", "one of auto, 1, 2"),
        ("PHOENIX_HTTP", "h2", "one of auto, 1, 2"),
        ("PHOENIX_HTTP", "", "one of auto, 1, 2"),
    ],
)
def test_bad_probe_heartbeat_or_http_value_names_the_key(variable: str, raw: str, expect: str) -> None:
    key = variable.removeprefix("PHOENIX_").lower()

    message = _error(lambda: load_settings(env={variable: raw}))

    assert message == f"invalid value for {key} (from {variable}): expected {expect}, got {raw!r}"


def test_http_mode_is_case_insensitive_and_a_toml_integer_will_do(tmp_path: Path) -> None:
    assert load_settings(env={"PHOENIX_HTTP": "AUTO"}).http == "auto"
    assert load_settings(env={}, config_file=_write(tmp_path / "a.toml", "http = 2\n")).http == "2"
    assert load_settings(cli={"http": 1}, env={}).http == "1"
    bad = _write(tmp_path / "b.toml", "http = 3\n")
    assert _error(lambda: load_settings(env={}, config_file=bad)).endswith(
        "expected one of auto, 1, 2, got 3"
    )
    boolean = _write(tmp_path / "c.toml", "http = true\n")
    assert _error(lambda: load_settings(env={}, config_file=boolean)).startswith("invalid value for http ")


def test_readiness_stalls_no_later_than_liveness() -> None:
    equal = load_settings(env={"PHOENIX_LIVE_STALE_MS": "3000", "PHOENIX_READY_STALE_MS": "3000"})
    assert (equal.live_stale_ms, equal.ready_stale_ms) == (3000, 3000)

    above_default = _error(lambda: load_settings(env={"PHOENIX_READY_STALE_MS": "6000"}))
    below_ready = _error(lambda: load_settings(cli={"live_stale_ms": 1000}, env={}))

    assert above_default == (
        "invalid value for ready_stale_ms: 6000 is above live_stale_ms (5000); "
        "readiness must fail before liveness"
    )
    assert "ready_stale_ms: 2000 is above live_stale_ms (1000)" in below_ready


def test_details_token_needs_a_token() -> None:
    message = _error(lambda: load_settings(env={"PHOENIX_DETAILS": "token"}))
    assert "details" in message
    assert "PHOENIX_TOKEN" in message
    assert load_settings(env={"PHOENIX_DETAILS": "token", "PHOENIX_TOKEN": "t"}).token == "t"
    assert "details" in _error(lambda: load_settings(env={"PHOENIX_DETAILS": "sometimes"}))


# --- [[check]] tables ------------------------------------------------------------------------------------

CHECKS = """
[[check]]
name = "db"
kind = "postgres"
dsn = "postgresql://app:${DB_PASSWORD}@${DB_HOST}:5432/app"
query = "SELECT $$dollar-quoted$$"
timeout_ms = 200
interval_ms = 2000

[[check]]
name = "upstream"
kind = "http"
url = "http://api.internal/health"
expect_status = ["2xx", 301, "${ALSO}"]
threshold = 0
warn_threshold = 0.5
failures_before_unready = 3
"""
CHECKS_ENV = {"DB_PASSWORD": "pw-7c1e", "DB_HOST": "db.internal", "ALSO": "3xx"}


def _checks_file(tmp_path: Path, *entries: str, nested: bool = False) -> Path:
    array = "[[phoenix.check]]" if nested else "[[check]]"
    text = "".join(f"\n{array}\n{entry}\n" for entry in entries)
    return _write(tmp_path / "conf.toml", ("[phoenix]\nport = 7010\n" if nested else "") + text)


def test_check_tables_are_read_in_order_with_their_keys_and_strings_expanded(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", "port = 7010\n" + CHECKS)

    settings = load_settings(env=CHECKS_ENV, config_file=toml)

    db, upstream = settings.checks
    assert (db.name, db.kind, db.source) == ("db", "postgres", f"config file '{toml}'")
    assert db.settings == {
        "dsn": "postgresql://app:pw-7c1e@db.internal:5432/app",
        "query": "SELECT $$dollar-quoted$$",  # a lone `$` is not a reference
        "timeout_ms": 200,
        "interval_ms": 2000,
    }
    assert (upstream.name, upstream.kind) == ("upstream", "http")
    assert upstream.settings == {
        "url": "http://api.internal/health",
        "expect_status": ["2xx", 301, "3xx"],
        "threshold": 0,
        "warn_threshold": 0.5,
        "failures_before_unready": 3,
    }
    assert settings.port == 7010
    assert "checks" not in settings.explicit


def test_check_tables_under_the_phoenix_table(tmp_path: Path) -> None:
    toml = _checks_file(tmp_path, 'name = "data"\nkind = "disk"\npath = "/srv"', nested=True)

    settings = load_settings(env={}, config_file=toml)

    assert [(c.name, c.kind, c.settings) for c in settings.checks] == [("data", "disk", {"path": "/srv"})]
    assert settings.port == 7010


def test_no_check_tables_means_no_checks(tmp_path: Path) -> None:
    assert load_settings(env={}).checks == ()
    assert load_settings(env={}, config_file=_write(tmp_path / "conf.toml", "port = 1\n")).checks == ()


def test_checks_are_not_a_scalar_key() -> None:
    assert "check" not in {key.name for key in config.KEYS}
    assert "checks" not in {key.name for key in config.KEYS}
    assert load_settings(env={"PHOENIX_CHECK": "x", "PHOENIX_CHECKS": "x"}).checks == ()
    assert "'checks'" in _error(lambda: load_settings(cli={"checks": "x"}, env={}))


def test_check_beside_a_phoenix_table_must_move_into_it(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", '[phoenix]\nport = 1\n\n[[check]]\nname = "m"\nkind = "memory"\n')

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert message == (
        f"[[check]] in config file '{toml}' is outside the [phoenix] table; make it [[phoenix.check]]"
    )


@pytest.mark.parametrize(
    ("text", "ending"),
    [
        ('[check]\nname = "m"\n', "'check' must be [[check]] tables, got a table"),
        ('check = "postgresql://app:pw@db"\n', "'check' must be [[check]] tables, got a string"),
        ("[phoenix]\ncheck = 5\n", "'check' must be [[phoenix.check]] tables, got 5"),
    ],
)
def test_check_must_be_an_array_of_tables(tmp_path: Path, text: str, ending: str) -> None:
    toml = _write(tmp_path / "conf.toml", text)

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert message.startswith("invalid ")
    assert str(toml) in message
    assert message.endswith(ending)


def test_a_check_entry_that_is_not_a_table_is_named_by_position(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", 'check = [{name = "m", kind = "memory"}, "redis://:pw@cache"]\n')

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert message == f"invalid [[check]] #2 in config file '{toml}': expected a table, got a string"


def test_a_misspelt_check_is_suggested(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", '[[chek]]\nname = "m"\n')

    assert "unknown key 'chek'" in (message := _error(lambda: load_settings(env={}, config_file=toml)))
    assert "(did you mean 'check'?)" in message


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (['kind = "memory"'], "invalid [[check]] #1 in {file}: missing key 'name'"),
        (
            ['name = "m"\nkind = "memory"', 'name = ""\nkind = "memory"'],
            "invalid value for name of [[check]] #2 (from {file}): expected a non-empty string, got ''",
        ),
        (
            ['name = 3\nkind = "memory"'],
            "invalid value for name of [[check]] #1 (from {file}): expected a non-empty string, got 3",
        ),
        (
            ['name = "m"\nkind = "memory"', 'name = "d"\nkind = "disk"', 'name = "m"\nkind = "tcp"'],
            "invalid [[check]] 'm' in {file}: duplicate name (also [[check]] #1)",
        ),
        (['name = "m"'], "invalid [[check]] 'm' in {file}: missing key 'kind'"),
        (
            ['name = "m"\nkind = ["memory"]'],
            "invalid value for kind of [[check]] 'm' (from {file}): expected a string, got an array",
        ),
    ],
)
def test_check_name_and_kind_are_validated(tmp_path: Path, entries: list[str], expected: str) -> None:
    toml = _checks_file(tmp_path, *entries)

    assert _error(lambda: load_settings(env={}, config_file=toml)) == expected.format(
        file=f"config file '{toml}'"
    )


@pytest.mark.parametrize(
    ("line", "expect", "shown"),
    [
        ('threshold = "0.5"', "a finite number", "a string"),
        ("threshold = true", "a finite number", "True"),
        ("threshold = nan", "a finite number", "nan"),
        ("warn_threshold = inf", "a finite number", "inf"),
        ("warn_threshold = [0.5]", "a finite number", "an array"),
        ("timeout_ms = 0", "an integer > 0", "0"),
        ("timeout_ms = 1.5", "an integer > 0", "1.5"),
        ("interval_ms = -1000", "an integer > 0", "-1000"),
        ('interval_ms = "1000"', "an integer > 0", "a string"),
        ("failures_before_unready = 0", "an integer >= 1", "0"),
        ("failures_before_unready = true", "an integer >= 1", "True"),
        ("failures_before_unready = 1979-05-27", "an integer >= 1", "a date or time"),
    ],
)
def test_bad_common_check_key_names_key_check_and_file(
    tmp_path: Path, line: str, expect: str, shown: str
) -> None:
    toml = _checks_file(tmp_path, f'name = "db"\nkind = "postgres"\ndsn = "host=db"\n{line}')
    key = line.split(" ")[0]

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert message == (
        f"invalid value for {key} of [[check]] 'db' (from config file '{toml}'): "
        f"expected {expect}, got {shown}"
    )


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("threshold = 0", 0),
        ("threshold = -0.5", -0.5),
        ("warn_threshold = 1", 1),
        ("timeout_ms = 1", 1),
        ("interval_ms = 1", 1),
        ("failures_before_unready = 1", 1),
    ],
)
def test_common_check_key_bounds_are_accepted(tmp_path: Path, line: str, value: object) -> None:
    toml = _checks_file(tmp_path, f'name = "m"\nkind = "memory"\n{line}')

    (check,) = load_settings(env={}, config_file=toml).checks

    assert check.settings == {line.split(" ")[0]: value}


def test_kind_keys_are_left_to_the_core(tmp_path: Path) -> None:
    """Kind-specific keys have one home, the Rust core; the config passes them on as written."""
    toml = _checks_file(tmp_path, 'name = "m"\nkind = "mysql"\ndns = 1\nport = "x"\nfollow = {a = 1}')

    (check,) = load_settings(env={}, config_file=toml).checks

    assert (check.kind, check.settings) == ("mysql", {"dns": 1, "port": "x", "follow": {"a": 1}})


def test_expansion_takes_variables_from_the_given_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PX_HOST", "from-os")
    toml = _checks_file(tmp_path, 'name = "t"\nkind = "tcp"\nhost = "${PX_HOST}"\nport = 1')

    assert load_settings(env={"PX_HOST": "given"}, config_file=toml).checks[0].settings["host"] == "given"
    assert load_settings(config_file=toml).checks[0].settings["host"] == "from-os"


@pytest.mark.parametrize(
    ("written", "expanded"),
    [
        ("${A}${B}", "ab"),
        ("x-${A}-y", "x-a-y"),
        ("${EMPTY}", ""),
        ("$${A}", "${A}"),
        ("$A {A} $", "$A {A} $"),
        ("${A}", "a"),
    ],
)
def test_expansion_forms(tmp_path: Path, written: str, expanded: str) -> None:
    toml = _checks_file(tmp_path, f"name = 'h'\nkind = 'http'\nbody_contains = '{written}'")

    (check,) = load_settings(env={"A": "a", "B": "b", "EMPTY": ""}, config_file=toml).checks

    assert check.settings["body_contains"] == expanded


def test_an_expanded_value_is_not_expanded_again(tmp_path: Path) -> None:
    toml = _checks_file(tmp_path, "name = 'h'\nkind = 'http'\nbody_contains = '${A}'")

    (check,) = load_settings(env={"A": "${B}", "B": "b"}, config_file=toml).checks

    assert check.settings["body_contains"] == "${B}"


def test_a_missing_variable_names_check_key_and_variable_and_no_value(tmp_path: Path) -> None:
    toml = _checks_file(
        tmp_path,
        'name = "db"\nkind = "postgres"\ndsn = "postgresql://app:hunter2@${DB_HOST}/app?password=${PW}"',
    )

    message = _error(lambda: load_settings(env={"PW": "s3cr3t-pw"}, config_file=toml))

    assert message == (
        f"invalid [[check]] 'db' in config file '{toml}': dsn: ${{DB_HOST}} is not set in the environment"
    )


def test_a_missing_variable_in_a_list_names_the_key(tmp_path: Path) -> None:
    toml = _checks_file(tmp_path, 'name = "h"\nkind = "http"\nexpect_status = [200, "${CLASS}"]')

    message = _error(lambda: load_settings(env={}, config_file=toml))

    assert message.endswith(
        "'h' in config file '" + str(toml) + "': expect_status: ${CLASS} is not set in the environment"
    )


@pytest.mark.parametrize("written", ["${DB_PASSWORD", "${1X}", "${}", "pre-${ A }"])
def test_a_malformed_reference_is_an_error(tmp_path: Path, written: str) -> None:
    toml = _checks_file(tmp_path, f"name = 'db'\nkind = 'postgres'\ndsn = '{written}'")

    message = _error(lambda: load_settings(env={"DB_PASSWORD": "x", "1X": "x"}, config_file=toml))

    assert message == (
        f"invalid [[check]] 'db' in config file '{toml}': dsn: '${{' starts no ${{VAR}} reference "
        "(write $${ for a literal '${')"
    )


def test_name_and_kind_are_not_expanded(tmp_path: Path) -> None:
    toml = _checks_file(tmp_path, "name = '${A}'\nkind = '${A}'")

    (check,) = load_settings(env={"A": "a"}, config_file=toml).checks

    assert (check.name, check.kind) == ("${A}", "${A}")


def test_check_settings_stay_out_of_reprs(tmp_path: Path) -> None:
    """A DSN holds a password: printing the settings (a log line, a failed assertion) must not show it."""
    toml = _write(tmp_path / "conf.toml", CHECKS)

    settings = load_settings(env=CHECKS_ENV, config_file=toml)

    assert "pw-7c1e" in settings.checks[0].settings["dsn"]
    assert "pw-7c1e" not in repr(settings)
    assert "CheckSpec(name='db', kind='postgres'" in repr(settings)


def test_settings_with_checks_survive_pickling_for_spawned_workers(tmp_path: Path) -> None:
    toml = _write(tmp_path / "conf.toml", CHECKS)
    settings = load_settings(env=CHECKS_ENV, config_file=toml)

    restored = pickle.loads(pickle.dumps(settings))

    assert restored == settings
    assert [c.settings for c in restored.checks] == [c.settings for c in settings.checks]
