"""Micro-benchmark plumbing: the event loop they share, and a ratio summary after pytest-benchmark's table."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import uvloop

Groups = list[tuple[Any, list[dict[str, Any]]]]
_GROUPS = pytest.StashKey[Groups]()
PHOENIX = "phoenix"
# What a group sets Phoenix beside (``extra_info["lib"]``): the same work in pure Python, or for the
# /metrics scrape the official Python client.
BASELINES = ("pure-python", "prometheus-client")


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
    """Per group, its baseline's median over Phoenix's: how many times faster Phoenix is (this run's
    benchmarks only, not those loaded by ``--benchmark-compare``)."""
    medians: dict[str, dict[str, float]] = {}
    for _key, benchmarks in config.stash.get(_GROUPS, []):
        for bench in benchmarks:
            if bench.get("source") in (None, False, "NOW"):
                medians.setdefault(bench["group"], {})[bench["extra_info"].get("lib")] = bench["median"]
    rows = [
        (group, libs[PHOENIX], baseline, libs[baseline])
        for group, libs in medians.items()
        for baseline in BASELINES
        if PHOENIX in libs and baseline in libs
    ]
    if not rows:
        return
    terminalreporter.write_sep("-", f"baseline median / {PHOENIX} median (above 1: {PHOENIX} is faster)")
    width = max(len(group) for group, *_ in rows)
    baseline_width = max(len(baseline) for _, _, baseline, _ in rows)
    for group, phoenix, baseline, baseline_median in rows:
        terminalreporter.write_line(
            f"{group:<{width}}  {PHOENIX} {_time(phoenix):>9}  {baseline:>{baseline_width}} "
            f"{_time(baseline_median):>9}  {baseline_median / phoenix:6.2f}x"
        )
