"""The wheel users install: built by `make wheel`, installed where no Rust toolchain exists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_without_rust_and_checks_ready(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(["make", "-s", "wheel", f"DIST={dist}"], cwd=ROOT, check=True, timeout=900)
    (wheel,) = dist.glob("*-abi3-*.whl")
    assert list(dist.glob("*.tar.gz")), "make wheel also builds the sdist"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Only the venv and the system directories: no cargo, rustc or maturin to fall back on.
    path = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])
    assert shutil.which("cargo", path=path) is None
    env = {"PATH": path, "HOME": os.environ.get("HOME", str(tmp_path))}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)]
    subprocess.run(pip, check=True, env=env, timeout=600)

    result = subprocess.run(
        [str(venv / "bin" / "phoenix"), "check", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ready"
