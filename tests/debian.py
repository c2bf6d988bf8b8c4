"""Debian packages that end-to-end tests run (curl, wrk, PostgreSQL, Redis...), installed when missing: CI
runs as root on a fresh machine, where none of them is."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

APT_TIMEOUT_S = 600

# `apt-get update` once per session, however many packages are missing.
_package_lists_updated = False


def _install(package: str, missing: str) -> None:
    """``apt-get install package`` for ``missing`` (a command or a file); not being root fails the test,
    naming the package."""
    global _package_lists_updated
    if os.geteuid() != 0:
        pytest.fail(f"{missing} is missing: apt-get install {package} (or run the tests as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = [["apt-get", "install", "-y", "-q", "--no-install-recommends", package]]
    if not _package_lists_updated:
        commands.insert(0, ["apt-get", "update", "-q"])
    for argv in commands:
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=APT_TIMEOUT_S, check=True)
    _package_lists_updated = True


def ensure_command(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` for it (``apt-get update`` first) when
    it is missing. Not being root and not having it fails the test, naming the package."""
    found = shutil.which(command)
    if found:
        return found
    _install(package, command)
    found = shutil.which(command)
    if not found:
        pytest.fail(f"apt-get install {package} did not provide {command}")
    return found


def ensure_files(pattern: str, package: str) -> list[Path]:
    """The files matching the glob ``pattern`` (for commands outside PATH, e.g. a versioned directory),
    installing ``package`` when there is none, as :func:`ensure_command` does."""
    found = glob.glob(pattern)
    if not found:
        _install(package, pattern)
        found = glob.glob(pattern)
    if not found:
        pytest.fail(f"apt-get install {package} did not provide {pattern}")
    return [Path(path) for path in sorted(found)]
