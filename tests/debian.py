"""Debian packages that end-to-end tests run (curl, wrk), installed when missing: CI runs as root on a
fresh machine, where none of them is."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

APT_TIMEOUT_S = 600


def ensure_command(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` for it (``apt-get update`` first) when
    it is missing. Not being root and not having it fails the test, naming the package."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{command} is missing: apt-get install {package} (or run the tests as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
    ):
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=APT_TIMEOUT_S, check=True)
    found = shutil.which(command)
    if not found:
        pytest.fail(f"apt-get install {package} did not provide {command}")
    return found
