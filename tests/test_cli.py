"""`phoenix serve` and `phoenix check` as a user runs them: exit statuses and what they print."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, free_port, phoenix_env, wait_until, wait_until_serving
from .test_wheel import cargo_version


def phoenix(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A free port unless the test names one: `phoenix check` asks whatever answers at the configured
    # port, and on a shared machine 5001 may be someone's `make run`.
    env = {"PHOENIX_PORT": str(free_port()), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "phoenix", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**phoenix_env(), **env},
        timeout=60,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Listening" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        (["--port", "abc"], {}, ["port", "command line"]),
        (["--port", "70000"], {}, ["port"]),
        (["--workers", "0"], {}, ["workers"]),
        ([], {"PHOENIX_PORT": "x"}, ["port", "PHOENIX_PORT"]),
        ([], {"PHOENIX_REQUEST_LOG": "maybe"}, ["request_log", "PHOENIX_REQUEST_LOG"]),
        (["--config", "missing.toml"], {}, ["missing.toml"]),
        (["--app", "no_such_module:kernel"], {}, ["app", "no_such_module"]),
        (["--app", "tests.apps:nothing_here"], {}, ["app", "nothing_here"]),
        (["--app", "json:dumps"], {}, ["app", "calling 'json:dumps' failed: TypeError"]),
        (["--app", "tests.apps:_never"], {}, ["app", "not a phoenix.Kernel"]),
        (["--workers", "2"], {}, ["workers", "one process"]),
        (["--probe-port", "70000"], {}, ["probe_port", "command line"]),
        (["--probe-host", ""], {}, ["probe_host", "command line"]),
        (["--http", "3"], {}, ["http", "command line", "one of auto, 1, 2"]),
        ([], {"PHOENIX_HTTP": "h2c"}, ["http", "PHOENIX_HTTP"]),
        ([], {"PHOENIX_READY_STALE_MS": "6000"}, ["ready_stale_ms", "live_stale_ms"]),
        ([], {"PHOENIX_LIVE_STALE_MS": "0"}, ["live_stale_ms", "PHOENIX_LIVE_STALE_MS"]),
        (["--app", "tests.apps:empty", "--workers", "2", "--probe-port", "0"], {}, ["probe_port", "worker"]),
        (["--port", "5999", "--probe-port", "5999"], {}, ["probe_port", "5999 is the main port"]),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], needles: list[str]
) -> None:
    assert_config_error(phoenix("serve", *args, cwd=tmp_path, env=env), *needles)


def test_bad_config_file_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "phoenix.toml").write_text("port = 5001\nprot = 1\n")
    assert_config_error(phoenix("serve", cwd=tmp_path), "prot", "phoenix.toml")
    (tmp_path / "phoenix.toml").write_text("port = [")
    assert_config_error(phoenix("check", cwd=tmp_path), "phoenix.toml")


def test_check_exits_0_when_the_default_kernel_is_ready(tmp_path: Path) -> None:
    result = phoenix("check", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "ready"
    assert set(report["subsystems"]) == {"plastic_ltm", "triune_conscience", "world_model"}


def test_check_exits_1_and_reports_why_when_not_ready(tmp_path: Path) -> None:
    result = phoenix("check", "--app", "tests.apps:failing", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["missing"] == ["raises", "low"]
    assert report["subsystems"]["raises"]["error"].startswith("ValueError")


def test_data_dir_precedence_is_cli_then_env_then_file(tmp_path: Path) -> None:
    (tmp_path / "phoenix.toml").write_text('[phoenix]\ndata_dir = "from-file"\n')
    env = {"PHOENIX_DATA_DIR": "from-env"}
    assert phoenix("check", cwd=tmp_path).returncode == 0
    assert phoenix("check", cwd=tmp_path, env=env).returncode == 0
    assert phoenix("check", "--data-dir", "from-cli", cwd=tmp_path, env=env).returncode == 0
    for used in ("from-file", "from-env", "from-cli"):
        assert (tmp_path / used / "plastic_ltm.redb").exists(), used


def test_public_details_on_a_non_loopback_host_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from phoenix import Kernel
    from phoenix.cli import warn_if_details_public

    with caplog.at_level("WARNING", logger="phoenix.kernel"):
        warn_if_details_public(Kernel(details="always"), "127.0.0.1")
        warn_if_details_public(Kernel(details="always"), "localhost")
        warn_if_details_public(Kernel(details="token", token="t"), "0.0.0.0")
        warn_if_details_public(Kernel(), "0.0.0.0")  # unset: status only there
        assert caplog.records == []
        warn_if_details_public(Kernel(details="always"), "0.0.0.0")
    (record,) = caplog.records
    assert "0.0.0.0" in record.getMessage()
    assert "details = 'always'" in record.getMessage()


def test_unset_details_stay_hidden_when_the_probe_port_reaches_beyond_loopback() -> None:
    from phoenix import Kernel
    from phoenix.cli import details_in_force, exposed_host

    on_loopback = Kernel(probe_port=5002)
    assert details_in_force(on_loopback, exposed_host(on_loopback, "127.0.0.1"))[0] == "always"
    probes_beyond = Kernel(probe_port=5002, probe_host="0.0.0.0")
    assert exposed_host(probes_beyond, "127.0.0.1") == "0.0.0.0"
    mode, line = details_in_force(probes_beyond, exposed_host(probes_beyond, "127.0.0.1"))
    assert mode == "never"
    assert "0.0.0.0" in line
    # Without a probe port, its host exposes nothing.
    no_probes = Kernel(probe_host="0.0.0.0")
    assert exposed_host(no_probes, "127.0.0.1") == "127.0.0.1"


# --- the settings a served kernel runs with ----------------------------------------------------------


def test_the_default_kernel_is_built_with_the_probe_and_heartbeat_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phoenix import cli
    from phoenix.config import load_settings
    from phoenix.kernel import default_kernel

    options: dict[str, Any] = {}

    def recording(data_dir: Any, **given: Any) -> Any:
        options.update(given)
        return default_kernel(data_dir, **given)

    monkeypatch.setattr(cli, "default_kernel", recording)
    env = {"PHOENIX_PROBE_HOST": "127.0.0.2", "PHOENIX_LIVE_STALE_MS": "900", "PHOENIX_READY_STALE_MS": "400"}
    settings = load_settings(cli={"data_dir": tmp_path / "data", "probe_port": "9101"}, env=env)

    kernel = cli.served_kernel(settings)

    assert (kernel.probe_port, kernel.probe_host) == (9101, "127.0.0.2")
    assert {name: options[name] for name in ("live_stale_ms", "ready_stale_ms")} == {
        "live_stale_ms": 900,
        "ready_stale_ms": 400,
    }
    assert cli.served_kernel(load_settings(cli={"data_dir": tmp_path / "other"}, env={})).probe_port is None


PROBED = """
    from phoenix import Kernel

    def kernel():
        return Kernel(probe_port=9201, probe_host="127.0.0.3")
"""


def test_an_apps_own_probe_listener_holds_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phoenix.cli import served_kernel
    from phoenix.config import load_settings

    (tmp_path / "probed_app.py").write_text(textwrap.dedent(PROBED))
    monkeypatch.syspath_prepend(str(tmp_path))

    def probe_address(cli: dict[str, object], env: dict[str, str]) -> tuple[object, object]:
        kernel = served_kernel(load_settings(cli={"app": "probed_app:kernel", **cli}, env=env))
        return kernel.probe_port, kernel.probe_host

    assert probe_address({}, {}) == (9201, "127.0.0.3")
    assert probe_address({"probe_port": "9202"}, {}) == (9202, "127.0.0.3")
    assert probe_address({}, {"PHOENIX_PROBE_HOST": "127.0.0.4"}) == (9201, "127.0.0.4")
    # Set to its default, it is still set: the kernel's own value gives way.
    assert probe_address({}, {"PHOENIX_PROBE_HOST": "127.0.0.1"}) == (9201, "127.0.0.1")


def test_serve_opens_the_probe_listener_and_says_where(serve: Any) -> None:
    probe_port = free_port()
    server = serve("--probe-port", str(probe_port))

    probe = Server(server.proc, probe_port, server.log_path, server.runs_path, server.data_dir)
    wait_until_serving(probe, "/health")

    assert probe.request("/health").json()["status"] == "healthy"
    assert f"probes on 127.0.0.1:{probe_port}" in server.logs()


def _serve_app(serve: Any, tmp_path: Path, source: str, *args: str, **env: str) -> Server:
    """``phoenix serve --app app:kernel`` for an app module written to ``tmp_path``, with only the
    ``PHOENIX_*`` variables given here (not even the test suite's drain of 0 ms)."""
    (tmp_path / "app.py").write_text(textwrap.dedent(source))
    server: Server = serve("--app", "app:kernel", *args, env=env, suite_defaults=False)
    return server


DRAIN_800 = """
    from phoenix import Kernel

    kernel = Kernel(shutdown_drain_ms=800)
"""


@pytest.mark.parametrize(("env", "drained_ms"), [({}, 800), ({"PHOENIX_SHUTDOWN_DRAIN_MS": "300"}, 300)])
def test_the_kernels_own_drain_holds_unless_configured(
    serve: Any, tmp_path: Path, env: dict[str, str], drained_ms: int
) -> None:
    server = _serve_app(serve, tmp_path, DRAIN_800, **env)

    assert server.stop(timeout=30) == 0, server.logs()
    assert f"draining for {drained_ms} ms" in server.logs()


QUIET = """
    from phoenix import Kernel

    kernel = Kernel(request_log=False)
"""


@pytest.mark.parametrize(("env", "logged"), [({}, False), ({"PHOENIX_REQUEST_LOG": "true"}, True)])
def test_the_kernels_own_request_log_holds_unless_configured(
    serve: Any, tmp_path: Path, env: dict[str, str], logged: bool
) -> None:
    server = _serve_app(serve, tmp_path, QUIET, **env)
    assert server.request("/ready").status == 200

    assert server.stop(timeout=30) == 0, server.logs()
    assert ("GET /ready 200" in server.logs()) is logged, server.logs()


READY_DB = """
    import os

    from phoenix import Kernel

    kernel = Kernel()

    @kernel.subsystem("db", threshold=0.5)
    def db() -> float:
        return 0.9

    @kernel.subsystem("token_hidden", threshold=0.5)
    def token_hidden() -> bool:
        return "PHOENIX_TOKEN" not in os.environ  # what a subprocess the check starts would inherit
"""


@pytest.mark.parametrize(
    ("host", "details", "full", "line"),
    [
        (
            "127.0.0.1",
            None,
            True,
            "readiness details: full (details unset and serving on 127.0.0.1, loopback)",
        ),
        (
            "0.0.0.0",
            None,
            False,
            "readiness details: status only (details unset and serving on 0.0.0.0, beyond loopback; "
            'set details = "always" to show them)',
        ),
        ("0.0.0.0", "always", True, 'readiness details: full (details = "always")'),
    ],
)
def test_unset_details_are_shown_on_loopback_only(
    serve: Any, tmp_path: Path, host: str, details: str | None, full: bool, line: str
) -> None:
    source = READY_DB if details is None else READY_DB.replace("Kernel()", f"Kernel(details={details!r})")
    server = _serve_app(serve, tmp_path, source, "--host", host)  # 0.0.0.0 answers on 127.0.0.1 too

    body = server.request("/ready").json()

    if full:
        assert body["subsystems"]["db"]["metric"] == 0.9
    else:
        assert body == {"status": "ready"}
    assert line in server.logs()
    warned = "with details = 'always': subsystems, metrics and errors are visible" in server.logs()
    assert warned is (details == "always" and host == "0.0.0.0")


def test_the_token_stays_out_of_the_servers_environments(serve: Any) -> None:
    token = "tok-3f9a-never-in-environ"
    server = serve(env={"PHOENIX_DETAILS": "token", "PHOENIX_TOKEN": token})

    for pid in [server.proc.pid, *server.worker_pids()]:
        assert token.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), pid
    assert set(server.request("/ready").json()) == {"status"}
    authorised = server.request("/ready", headers={"Authorization": f"Bearer {token}"}).json()
    assert set(authorised["subsystems"]) == {"plastic_ltm", "triune_conscience", "world_model"}


def test_checks_do_not_inherit_the_token(serve: Any, tmp_path: Path) -> None:
    server = _serve_app(serve, tmp_path, READY_DB, PHOENIX_TOKEN="tok-3f9a")

    response = server.request("/ready")

    assert response.json()["subsystems"]["token_hidden"]["ready"] is True, response.body


# -- `phoenix check` beside `phoenix serve` ----------------------------------------------------------


def test_check_asks_the_server_that_holds_the_store(serve: Any, tmp_path: Path) -> None:
    """Evaluated in process, the check would find the store held by the server ("already open")."""
    server = serve()
    wait_until_serving(server, "/ready")
    result = phoenix(
        "check", "--data-dir", str(server.data_dir), cwd=tmp_path, env={"PHOENIX_PORT": str(server.port)}
    )
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    assert report["status"] == "ready"
    assert set(report["subsystems"]) == {"plastic_ltm", "triune_conscience", "world_model"}
    assert "already open" not in result.stdout + result.stderr


def test_check_asks_the_probe_listener_when_one_is_configured(serve: Any, tmp_path: Path) -> None:
    """Nothing listens at the main port the check is given: had it asked there, it would have built the
    kernel itself and found the store held by the server ("already open")."""
    probe_port = free_port()
    server = serve("--probe-port", str(probe_port))
    wait_until_serving(server, "/ready")
    env = {"PHOENIX_PORT": str(free_port()), "PHOENIX_PROBE_PORT": str(probe_port)}

    result = phoenix("check", "--data-dir", str(server.data_dir), cwd=tmp_path, env=env)

    assert result.returncode == 0, result
    assert json.loads(result.stdout)["status"] == "ready"
    assert "already open" not in result.stdout + result.stderr


def test_check_reports_a_server_that_is_not_ready_and_exits_1(serve: Any, tmp_path: Path) -> None:
    server = serve("--app", "tests.apps:failing")
    # Without --app, an in-process check would evaluate the (ready) default kernel instead.
    result = phoenix("check", "--url", f"http://127.0.0.1:{server.port}", cwd=tmp_path)
    assert result.returncode == 1, result
    report = json.loads(result.stdout)
    assert report["status"] == "not_ready"
    assert report["missing"] == ["raises", "low"]


def test_check_sends_the_configured_token(serve: Any, tmp_path: Path) -> None:
    server = serve("--app", "tests.apps:guarded")
    url = f"http://127.0.0.1:{server.port}"
    anonymous = phoenix("check", "--url", url, cwd=tmp_path)
    assert (anonymous.returncode, json.loads(anonymous.stdout)) == (0, {"status": "ready"})
    env = {"PHOENIX_DETAILS": "token", "PHOENIX_TOKEN": "s3cret"}
    bearer = phoenix("check", "--url", url, cwd=tmp_path, env=env)
    assert bearer.returncode == 0, bearer
    assert json.loads(bearer.stdout)["subsystems"]["db"]["metric"] == 0.9


def test_check_with_a_url_where_nothing_answers_exits_2_with_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = phoenix("check", "--url", url, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert url in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:21", "127.0.0.1:5001", "http://", "http://127.0.0.1:99999"])
def test_check_with_a_bad_url_exits_2_with_one_line(tmp_path: Path, url: str) -> None:
    result = phoenix("check", "--url", url, cwd=tmp_path)
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert "--url" in line


# --- [[check]] tables: the dependency checks of the config file ------------------------------------------


@pytest.mark.parametrize(
    ("toml", "args", "env", "line"),
    [
        (
            '[[check]]\nkind = "memory"\n',
            [],
            {},
            "invalid [[check]] #1 in config file 'phoenix.toml': missing key 'name'",
        ),
        (
            '[[check]]\nname = "m"\nkind = "memory"\n[[check]]\nname = "m"\nkind = "memory"\n',
            [],
            {},
            "invalid [[check]] 'm' in config file 'phoenix.toml': duplicate name (also [[check]] #1)",
        ),
        (
            'check = ["redis://:pw-0d1f@cache"]\n',
            [],
            {},
            "invalid [[check]] #1 in config file 'phoenix.toml': expected a table, got a string",
        ),
        (
            '[[check]]\nname = "m"\nkind = "memory"\ntimeout_ms = 0\n',
            [],
            {},
            "invalid value for timeout_ms of [[check]] 'm' (from config file 'phoenix.toml'): "
            "expected an integer > 0, got 0",
        ),
        (
            '[[check]]\nname = "db"\nkind = "postgres"\ndsn = "postgresql://app:${DB_PASSWORD}@127.0.0.1/app"\n',
            [],
            {},
            "invalid [[check]] 'db' in config file 'phoenix.toml': "
            "dsn: ${DB_PASSWORD} is not set in the environment",
        ),
        (
            '[[check]]\nname = "db"\nkind = "mysql"\n',
            [],
            {},
            "invalid [[check]] 'db' in config file 'phoenix.toml': unknown kind 'mysql' "
            "(expected one of postgres, redis, http, tcp, disk, memory)",
        ),
        (
            '[[check]]\nname = "db"\nkind = "postgres"\ndns = "host=127.0.0.1"\n',
            ["--app", "tests.apps:empty"],
            {},
            "invalid [[check]] 'db' in config file 'phoenix.toml': "
            "unknown key 'dns' (expected one of dsn, query, ca_file)",
        ),
        (
            '[[check]]\nname = "db"\nkind = "postgres"\ndsn = "postgresql://app:${DB_PASSWORD}@127.0.0.1:99999/app"\n',
            [],
            {"DB_PASSWORD": "pw-0d1f"},
            "invalid [[check]] 'db' in config file 'phoenix.toml': dsn: ",
        ),
        (
            '[[check]]\nname = "plastic_ltm"\nkind = "memory"\n',
            [],
            {},
            "invalid [[check]] 'plastic_ltm' in config file 'phoenix.toml': ",
        ),
    ],
)
@pytest.mark.parametrize("command", ["serve", "check"])
def test_a_bad_check_is_one_line_and_exit_2_before_anything_starts(
    tmp_path: Path, command: str, toml: str, args: list[str], env: dict[str, str], line: str
) -> None:
    (tmp_path / "phoenix.toml").write_text(toml)

    result = phoenix(command, *args, cwd=tmp_path, env=env)

    assert_config_error(result, line)
    assert result.stderr.startswith(f"phoenix: {line}")
    assert "pw-0d1f" not in result.stderr
    assert result.stdout == ""


def test_the_checks_join_an_apps_kernel_and_the_default_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phoenix.cli import served_kernel
    from phoenix.config import load_settings

    (tmp_path / "phoenix.toml").write_text(
        f'[[check]]\nname = "data"\nkind = "disk"\npath = "{tmp_path}"\n'
        '[[check]]\nname = "memory"\nkind = "memory"\nthreshold = 0.01\n'
    )
    monkeypatch.chdir(tmp_path)

    app = served_kernel(load_settings(cli={"app": "tests.apps:failing"}, env={}))
    default = served_kernel(load_settings(cli={"data_dir": tmp_path / "data"}, env={}))

    assert app.subsystems[-2:] == default.subsystems[-2:] == ["data", "memory"]
    assert "raises" in app.subsystems
    assert "plastic_ltm" in default.subsystems


def test_check_reports_the_checks_first_results(tmp_path: Path) -> None:
    """Dependency checks run in the background; a one-off check is judged at once (the empty kernel has
    nothing to initialise), and must report their first results rather than `pending`."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        (tmp_path / "phoenix.toml").write_text(
            f'[[check]]\nname = "data"\nkind = "disk"\npath = "{tmp_path}"\nthreshold = 0.0\n'
            f'[[check]]\nname = "upstream"\nkind = "tcp"\nhost = "127.0.0.1"\n'
            f"port = {listening.getsockname()[1]}\n"
        )

        result = phoenix("check", "--app", "tests.apps:empty", cwd=tmp_path)

    assert result.returncode == 0, result
    subsystems = json.loads(result.stdout)["subsystems"]
    assert set(subsystems) == {"data", "upstream"}
    assert {name: sub["status"] for name, sub in subsystems.items()} == {"data": "pass", "upstream": "pass"}
    assert subsystems["upstream"]["metric"] == 1.0
    assert 0.0 < subsystems["data"]["metric"] <= 1.0


def test_check_reports_a_failing_dependency_and_exits_1(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    (tmp_path / "phoenix.toml").write_text(
        f'[[check]]\nname = "upstream"\nkind = "tcp"\nhost = "127.0.0.1"\nport = {closed}\n'
    )

    result = phoenix("check", "--app", "tests.apps:empty", cwd=tmp_path)

    assert result.returncode == 1, result
    report = json.loads(result.stdout)
    assert report["missing"] == ["upstream"]
    assert report["subsystems"]["upstream"]["error"] == f"connection refused (127.0.0.1:{closed})"


def test_serve_watches_the_config_files_checks(serve: Any, tmp_path: Path) -> None:
    (tmp_path / "phoenix.toml").write_text(
        "[phoenix]\nrequest_log = false\n\n"
        f'[[phoenix.check]]\nname = "data"\nkind = "disk"\npath = "{tmp_path}"\n'
        "threshold = 0.0\ninterval_ms = 50\n"
    )
    server = serve()

    def data() -> Any:
        response = server.request("/ready/data")
        return response.status == 200 and response.json()

    detail = wait_until(data, what="the disk check's first result", server=server)
    assert 0.0 < detail["metric"] <= 1.0


def test_version_prints_cargo_tomls_version(tmp_path: Path) -> None:
    result = phoenix("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"phoenix {cargo_version()}\n", "")
