"""The load suite's options and its report: every table is printed again after the run, under
"Phoenix load suite", since pytest captures the tests' output."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

TABLES = pytest.StashKey[list[str]]()


def load_full(config: pytest.Config) -> bool:
    if config.getoption("--load-full", default=False):
        return True
    return os.environ.get("PHOENIX_LOAD_FULL", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def full(request: pytest.FixtureRequest) -> bool:
    """True for the seed's full durations (``--load-full`` or ``PHOENIX_LOAD_FULL=1``)."""
    return load_full(request.config)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report(table)`` prints a table and keeps it for the terminal summary."""
    tables = request.config.stash.setdefault(TABLES, [])

    def add(table: str) -> None:
        print(table)
        tables.append(table)

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    tables = config.stash.get(TABLES, [])
    if not tables:
        return
    mode = "full seed durations" if load_full(config) else "CI durations; --load-full for the seed's"
    terminalreporter.section(f"Phoenix load suite ({mode})")
    for table in tables:
        terminalreporter.write_line(table)
        terminalreporter.write_line("")
