"""What users install: the wheel `make wheel` builds (audited for glibc 2.17, installed where no Rust
toolchain exists, then run as a user runs it), the sdist (built into a working wheel with Rust), and the
one version, Cargo.toml's, that every part of them reports."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import phoenix
from phoenix import _core

from .conftest import ROOT, Server, free_port, wait_until_serving

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# manylinux2014: the oldest glibc our users' long-lived base images run (RHEL 7 and later).
OLDEST_GLIBC = (2, 17)
# Bounds `make wheel` (two release builds and the training run between them: about five minutes on 2 idle
# cores) and pip's build from the sdist (about two).
BUILD_TIMEOUT_S = 1200
# Bounds creating a venv or installing a wheel and its dependencies.
INSTALL_TIMEOUT_S = 300
# Only the system directories: no cargo, rustc or maturin to fall back on.
SYSTEM_PATH = ["/usr/bin", "/bin"]
# The release profile without whole-program LTO, over 16 code units: what these tests judge (the files,
# the platform tag, the glibc symbols, a working install) does not depend on it, and each build takes two
# thirds of the time (fat LTO is one long single-threaded link). `make wheel` itself builds as shipped.
QUICK_RELEASE = {"CARGO_PROFILE_RELEASE_LTO": "off", "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16"}
# The tests' profile-guided builds, kept apart from `make wheel`'s own (these are QUICK_RELEASE's).
PGO_DIR = ROOT / "target" / "pgo-tests"
# LLVM warns of each function of the optimised build the profile has no record of (the instrumented build's
# functions must carry the same names, or the profile is silently ignored); a training run of the same
# paths with fewer requests: what the test judges is which functions the profile covers, not their counts.
PGO_FOR_TESTS = ["PGO_RUSTFLAGS=-Cllvm-args=-pgo-warn-missing-function", "PGO_TRAIN_ARGS=--seconds 1"]
# The profile-guided pair of builds at opt-level 1 too, for the same reason as QUICK_RELEASE: make test's
# budget. Both builds of the pair take it, so their functions' names still match.
QUICK_PGO = {"CARGO_PROFILE_RELEASE_OPT_LEVEL": "1"}


# The first test to ask for the wheel waits for `make wheel` too, longer than pyproject's default timeout.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 300)


def cargo_version() -> str:
    """The version's one home."""
    with (ROOT / "Cargo.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["package"]["version"]
    return version


def fresh_venv(path: Path) -> Path:
    """A new venv with nothing but pip; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=INSTALL_TIMEOUT_S)
    return path / "bin"


def env_with_path(*directories: Path | str, home: Path) -> dict[str, str]:
    """An environment with ``directories`` as its whole PATH, and no variable of this venv or of Phoenix."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "CARGO_TARGET_DIR") and not k.startswith("PHOENIX_")
    }
    env["PATH"] = os.pathsep.join(map(str, directories))
    env.setdefault("HOME", str(home))
    return env


def install(venv_bin: Path, wheel: Path, env: dict[str, str]) -> None:
    pip = [str(venv_bin / "python"), "-m", "pip", "install", "-q", str(wheel)]
    subprocess.run(pip, check=True, env=env, timeout=INSTALL_TIMEOUT_S)


@dataclass
class WheelBuild:
    dist: Path  # the wheel and the sdist
    output: str  # what the build printed
    profile: Path  # the profile it was optimised with


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory: pytest.TempPathFactory) -> WheelBuild:
    """`make wheel`, run once for this module's tests, as shipped: trained, then built with the profile."""
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        ["make", "wheel", f"DIST={dist}", f"PGO_DIR={PGO_DIR}", *PGO_FOR_TESTS],
        cwd=ROOT,
        env={**os.environ, **QUICK_RELEASE, **QUICK_PGO},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert built.returncode == 0, built.stdout[-20000:]
    (profile,) = PGO_DIR.glob("phoenix-*.profdata")
    return WheelBuild(dist, built.stdout, profile)


@pytest.fixture(scope="module")
def dist(wheel_build: WheelBuild) -> Path:
    return wheel_build.dist


def llvm_tool(name: str) -> str:
    """The LLVM tool of rustc's LLVM version, as the Makefile installs it for PGO."""
    version = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    major = re.search(r"^LLVM version: (\d+)", version, re.MULTILINE)
    assert major, version
    return f"/usr/lib/llvm-{major[1]}/bin/{name}"


def covered_functions(profile: Path) -> list[str]:
    """The (mangled) names of the functions the training run entered, as the profile records them."""
    shown = subprocess.run(
        [llvm_tool("llvm-profdata"), "show", "--covered", str(profile)],
        capture_output=True,
        text=True,
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return shown.stdout.splitlines()


def test_the_version_has_one_home_in_cargo_toml() -> None:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    assert "version" not in project, "pyproject.toml takes the version from Cargo.toml (dynamic)"
    assert "version" in project["dynamic"]
    # The installed metadata, the package and the compiled core (CARGO_PKG_VERSION, as in
    # phoenix_build_info) all carry Cargo.toml's version: a stale build shows here.
    assert importlib.metadata.version("phoenix-kernel") == cargo_version()
    assert phoenix.__version__ == cargo_version()
    assert _core.__version__ == cargo_version()


@pytest.mark.slow
def test_the_wheel_is_optimised_with_a_profile_of_every_kind_of_request(wheel_build: WheelBuild) -> None:
    # The wheel was built with the profile (make prints the command), and the profile reached every
    # function: none of its names differs between the instrumented build and this one.
    assert f"-Cprofile-use={wheel_build.profile} " in wheel_build.output, wheel_build.output[-20000:]
    assert "no profile data available" not in wheel_build.output, wheel_build.output[-20000:]
    covered = covered_functions(wheel_build.profile)
    # Parts of mangled names (Rust's legacy mangling: lengths before names, ".." for "::"), each found only
    # in functions of one way in.
    trained = {
        "routing, both ports": "7service7Service5route",
        "the main port, through Granian": "6python4Core18__pymethod_serve__",
        "the probe port over HTTP/1.1": "_core..probe..socket..Socket",
        "the probe port over h2c": "_core..probe..Replayed",
        "gRPC health": "_core..probe..grpc..Health",
    }
    for what, part in trained.items():
        assert any(part in name for name in covered), f"the training never reached {what} ({part})"


@pytest.mark.slow
def test_make_wheel_builds_a_manylinux2014_abi3_wheel_by_auditwheel(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith(f"phoenix_kernel-{cargo_version()}-cp310-abi3-"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"phoenix_kernel-{cargo_version()}.dist-info/METADATA").decode()
    assert f"\nVersion: {cargo_version()}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata

    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        capture_output=True,
        text=True,
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    text = " ".join(shown.stdout.split())  # auditwheel wraps its lines
    tag = re.search(r'consistent with the following platform tag: "manylinux_(\d+)_(\d+)_x86_64"', text)
    assert tag, shown.stdout
    assert (int(tag[1]), int(tag[2])) <= OLDEST_GLIBC, shown.stdout


@pytest.mark.slow
def test_the_wheel_installs_without_rust_and_checks_and_serves(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    venv = fresh_venv(tmp_path / "venv")
    env = env_with_path(venv, *SYSTEM_PATH, home=tmp_path)
    assert shutil.which("cargo", path=env["PATH"]) is None
    install(venv, wheel, env)

    def phoenix_cli(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        command = [str(venv / "phoenix"), *args]
        run_env = {**env, **extra_env}
        return subprocess.run(command, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=120)

    version = phoenix_cli("--version")
    assert (version.returncode, version.stdout) == (0, f"phoenix {cargo_version()}\n"), version

    # Port 0: no server to ask (5001 may be someone's `make run`), so the kernel is checked in-process.
    check = phoenix_cli("check", "--data-dir", str(tmp_path / "check-data"), PHOENIX_PORT="0")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["status"] == "ready"

    port = free_port()
    data_dir = tmp_path / "serve-data"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(venv / "phoenix"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "PHOENIX_SHUTDOWN_DRAIN_MS": "0"},
            cwd=tmp_path,
            start_new_session=True,
        )
        server = Server(proc, port, log_path, tmp_path / "runs.txt", data_dir)
        try:
            wait_until_serving(server)
            health = server.request("/health")
            assert health.json()["status"] == "healthy"
            metrics = server.request("/metrics")
            assert metrics.status == 200, metrics.body
            assert f'phoenix_build_info{{version="{cargo_version()}"}} 1\n'.encode() in metrics.body
            assert server.stop(timeout=30) == 0, server.logs()
        finally:
            with contextlib.suppress(ProcessLookupError):  # no worker may outlive the test
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_the_sdist_builds_a_working_wheel_with_rust(dist: Path, tmp_path: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    cargo = shutil.which("cargo")
    assert cargo, "the sdist needs a Rust toolchain to build"
    builder = fresh_venv(tmp_path / "build-venv")
    # Unoptimised as well: this wheel is only imported, and the build is the longest step of `make test`.
    unoptimised = QUICK_RELEASE | {"CARGO_PROFILE_RELEASE_OPT_LEVEL": "0"}
    build_env = env_with_path(builder, Path(cargo).parent, *SYSTEM_PATH, home=tmp_path) | unoptimised
    built = tmp_path / "built"
    subprocess.run(
        [str(builder / "python"), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(built), str(sdist)],
        check=True,
        env=build_env,
        cwd=tmp_path,
        timeout=BUILD_TIMEOUT_S,
    )
    (wheel,) = built.glob("*.whl")

    venv = fresh_venv(tmp_path / "venv")
    env = env_with_path(venv, *SYSTEM_PATH, home=tmp_path)
    install(venv, wheel, env)
    imported = subprocess.run(
        [str(venv / "python"), "-c", "import phoenix._core; print(phoenix._core.__version__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert (imported.returncode, imported.stdout) == (0, f"{cargo_version()}\n"), imported.stderr
