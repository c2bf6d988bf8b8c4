"""The outcome of one load run and its table, in the layout of the seed's performance report."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


def fmt_latency(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(per_second: float) -> str:
    if math.isnan(per_second):
        return "n/a"
    return f"{per_second:,.0f} req/sec" if per_second >= 100 else f"{per_second:.2f} req/sec"


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` % of the values at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class LoadResult:
    """``latencies`` (seconds, in the order the requests were sent) are those of successful requests;
    ``failures`` counts the others by reason (an exception's type, or ``status <n>``)."""

    name: str
    total: int
    ok: int = 0
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    def succeed(self, latency: float) -> None:
        self.ok += 1
        self.latencies.append(latency)

    def fail(self, reason: str) -> None:
        self.failures[reason] += 1

    @property
    def success_rate(self) -> float:
        return 100.0 * self.ok / self.total if self.total else 0.0

    @property
    def throughput(self) -> float:
        """Successful requests a second."""
        return self.ok / self.duration if self.duration > 0 else math.nan

    @property
    def avg(self) -> float:
        return mean(self.latencies)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    def summary(self) -> str:
        """The counts, for an assertion message."""
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.failures.most_common())
        return f"{self.name}: {self.ok}/{self.total} succeeded" + (f"; failures {reasons}" if reasons else "")

    def table(self, extra: list[tuple[str, str]] | None = None) -> str:
        rows = [
            ("Total Requests", f"{self.total:,}"),
            ("Success Rate", f"{self.success_rate:.1f}%"),
            ("Throughput", fmt_rate(self.throughput)),
            ("Avg Latency", fmt_latency(self.avg)),
            ("P95 Latency", fmt_latency(self.p95)),
            ("P99 Latency", fmt_latency(self.p99)),
            ("Total Duration", fmt_latency(self.duration)),
        ]
        if self.failures:
            rows.append(("Failures", ", ".join(f"{r}: {c}" for r, c in self.failures.most_common())))
        rows.extend(extra or [])
        return "\n".join([self.name, *(f"  {label + ':':<19}{value}" for label, value in rows)])
