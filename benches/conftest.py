"""Micro-benchmark plumbing: the event loop they share, and ratio summaries after pytest-benchmark's table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
import uvloop

Groups = list[tuple[Any, list[dict[str, Any]]]]
_GROUPS = pytest.StashKey[Groups]()
PHOENIX = "phoenix"
# A benchmark's process CPU time per operation, in seconds, where it records one (``extra_info``).
CPU = "cpu_s"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every benchmark of a module, driven with ``run_until_complete``: uvloop, the
    loop ``phoenix serve`` runs Granian on."""
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_group_stats(
    config: pytest.Config, benchmarks: Any, group_by: str
) -> Generator[None, Groups, Groups]:
    groups: Groups = yield
    config.stash[_GROUPS] = groups
    return groups


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds / 1e-9:.1f} ns"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Per group, the other benchmark's figure over Phoenix's (``extra_info["lib"]``: the same work in
    pure Python, in Python's usual libraries, with the official Python client, or by Phoenix itself
    differently set up): the median time, then the CPU per operation where recorded. Above 1, Phoenix
    is faster (uses less). This run's benchmarks only, not those loaded by ``--benchmark-compare``."""
    benchmarks = [
        bench
        for _key, group in config.stash.get(_GROUPS, [])
        for bench in group
        if bench.get("source") in (None, False, "NOW")
    ]
    _write_ratios(
        terminalreporter,
        benchmarks,
        f"other median / {PHOENIX} median (above 1: {PHOENIX} is faster)",
        lambda bench: bench["median"],
    )
    _write_ratios(
        terminalreporter,
        benchmarks,
        f"other CPU per operation / {PHOENIX}'s (above 1: {PHOENIX} uses less)",
        lambda bench: bench["extra_info"].get(CPU),
    )


def _write_ratios(
    terminalreporter: Any,
    benchmarks: list[dict[str, Any]],
    title: str,
    value: Callable[[dict[str, Any]], float | None],
) -> None:
    """Under ``title``, one line per group holding Phoenix and another benchmark that both have a
    ``value``: both values, and the other's over Phoenix's."""
    values: dict[str, dict[str, float]] = {}
    for bench in benchmarks:
        found = value(bench)
        if found is not None:
            values.setdefault(bench["group"], {})[bench["extra_info"].get("lib")] = found
    rows = [
        (group, libs[PHOENIX], other, figure)
        for group, libs in values.items()
        if PHOENIX in libs
        for other, figure in libs.items()
        if other != PHOENIX
    ]
    if not rows:
        return
    terminalreporter.write_sep("-", title)
    width = max(len(group) for group, *_ in rows)
    other_width = max(len(other) for _, _, other, _ in rows)
    for group, phoenix, other, figure in rows:
        terminalreporter.write_line(
            f"{group:<{width}}  {PHOENIX} {_time(phoenix):>9}  {other:>{other_width}} "
            f"{_time(figure):>9}  {figure / phoenix:6.2f}x"
        )
