"""Soak: Phoenix's worker RSS under 50 keep-alive connections on /health and /ready for a set time.

    python benches/soak.py [--minutes 5] [--warmup 30] [--interval 10] [--request-log shipped|on|off] \
        [--out benches/results]

Phoenix (``phoenix serve``, default kernel, Granian settings as shipped) runs pinned to core 0; two
``wrk -t1 -c25`` processes pinned to core 1 load it, one on /health and one on /ready, first for
``--warmup`` seconds, then for ``--minutes``. The worker's VmRSS is read at the start of the measured load
(after the warm-up), every ``--interval`` seconds during it, at its end, and once more after 10 s idle.
The report gives RSS at start, end and max, the growth (end - start) against the issue's target
(≤ 2 MB over 5 minutes), a least-squares slope, and the load's req/s and latencies; markdown and JSON go
to ``--out`` as ``soak-<date>.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from http_harness import (
    BENCHES,
    LUA,
    SERVER_CPU,
    TARGET_SOAK_GROWTH_MB,
    WRK_CPU,
    Server,
    ServerSpec,
    children_cpu_seconds,
    cpu_seconds,
    machine_busy_seconds,
    machine_section,
    prepare_load_run,
    rss_kb,
    run_env,
    running,
    save_report,
    wait_quiet,
)

PATHS = ["/health", "/ready"]
CONNECTIONS_PER_PATH = 25
IDLE_AFTER_S = 10
TARGET_MINUTES = 5
MAX_SAMPLE_ROWS = 60  # in the markdown; the JSON has every sample


def log(message: str) -> None:
    print(f"[bench-soak] {message}", file=sys.stderr, flush=True)


def mb(kb: float) -> float:
    """kB (KiB, as /proc reports) to MB (10^6 bytes), the unit of the target."""
    return kb * 1024 / 1e6


def start_wrk(url: str, seconds: int) -> subprocess.Popen[str]:
    argv = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{CONNECTIONS_PER_PATH}", f"-d{seconds}s"]
    argv += ["--latency", "-s", str(LUA), url]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish_wrk(proc: subprocess.Popen[str], seconds: int) -> dict[str, Any]:
    """wrk_report.lua's summary of a finished (or finishing) wrk, plus req/s."""
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("WRK_JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}\n{err}")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("WRK_JSON "))
    report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
    return report


def sample(server: Server, t0: float) -> dict[str, Any]:
    workers = server.workers()
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "worker_pids": workers,
        "worker_rss_kb": sum(rss_kb(pid) for pid in workers),
        "main_rss_kb": rss_kb(server.proc.pid),
    }


def load(
    server: Server, seconds: int, interval: float | None
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """One wrk per path for ``seconds``, all at once; with ``interval``, RSS samples from the start to the
    end of the load. Returns each path's wrk summary, the samples, and the CPU used meanwhile (% of one
    core) by the server, by wrk and by everything else."""
    pids = server.all_pids()
    server_cpu, wrk_cpu, busy = cpu_seconds(pids), children_cpu_seconds(), machine_busy_seconds()
    t0 = time.monotonic()
    samples = [sample(server, t0)] if interval else []
    procs = {path: start_wrk(server.url(path), seconds) for path in PATHS}
    try:
        next_sample = t0 + (interval or 0)
        while any(proc.poll() is None for proc in procs.values()):
            server.check_alive()
            if time.monotonic() > t0 + seconds + 60:
                raise RuntimeError("wrk did not stop on time")
            if interval and time.monotonic() >= next_sample:
                samples.append(sample(server, t0))
                last = samples[-1]
                log(f"t={last['t_s']:.0f} s: worker VmRSS {last['worker_rss_kb'] / 1024:.2f} MiB")
                next_sample += interval
            time.sleep(0.2)
        if interval and time.monotonic() - t0 - samples[-1]["t_s"] > 1:
            samples.append(sample(server, t0))
        runs = {path: finish_wrk(proc, seconds) for path, proc in procs.items()}
        wall = time.monotonic() - t0
        server_cpu, wrk_cpu = cpu_seconds(pids) - server_cpu, children_cpu_seconds() - wrk_cpu
        busy = machine_busy_seconds() - busy
        cpu = {
            "server_pct": 100 * server_cpu / wall,
            "wrk_pct": 100 * wrk_cpu / wall,
            "other_pct": max(0.0, 100 * (busy - server_cpu - wrk_cpu) / wall),
        }
        return runs, samples, cpu
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def slope_mb_per_hour(samples: list[dict[str, Any]]) -> float:
    """Least-squares slope of the worker's RSS over time."""
    if len(samples) < 2:
        return 0.0
    xs = [float(s["t_s"]) for s in samples]
    ys = [mb(s["worker_rss_kb"]) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if not var:
        return 0.0
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    python = sys.executable
    argv = [str(Path(python).parent / "phoenix"), "serve", "--data-dir", str(workdir / "data")]
    argv += ["--port", "{port}"]
    env = (
        {}
        if args.request_log == "shipped"
        else {"PHOENIX_REQUEST_LOG": "true" if args.request_log == "on" else "false"}
    )
    spec = ServerSpec("phoenix", argv, PATHS, env=env, cwd=workdir)
    with running(spec, workdir) as server:
        body_bytes = server.wait_ready()
        rss_idle = sample(server, time.monotonic())
        busy_pct = wait_quiet()
        log(f"phoenix up (worker VmRSS {rss_idle['worker_rss_kb'] / 1024:.2f} MiB); warm-up {args.warmup} s")
        warmup, _, _ = load(server, args.warmup, None)
        seconds = round(args.minutes * 60)
        log(f"soak: {seconds} s, {CONNECTIONS_PER_PATH} connections on each of {', '.join(PATHS)}")
        runs, samples, cpu = load(server, seconds, args.interval)
        time.sleep(IDLE_AFTER_S)
        after_idle = sample(server, time.monotonic())
        log_bytes = server.log_path.stat().st_size if server.log_path.exists() else 0
        return {
            "argv": server.argv,
            "env": env,
            "body_bytes": body_bytes,
            "rss_idle_before_warmup": rss_idle,
            "warmup": warmup,
            "runs": runs,
            "samples": samples,
            "cpu": cpu,
            "busy_pct_before": busy_pct,
            "after_idle": after_idle,
            "server_log_bytes": log_bytes,
        }


def summarize(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    samples = data["samples"]
    start, end = samples[0]["worker_rss_kb"], samples[-1]["worker_rss_kb"]
    peak = max(s["worker_rss_kb"] for s in samples)
    growth = mb(end - start)
    pids = {tuple(s["worker_pids"]) for s in samples}
    return {
        "start_kb": start,
        "end_kb": end,
        "max_kb": peak,
        "min_kb": min(s["worker_rss_kb"] for s in samples),
        "after_idle_kb": data["after_idle"]["worker_rss_kb"],
        "growth_mb": growth,
        "max_growth_mb": mb(peak - start),
        "slope_mb_per_hour": slope_mb_per_hour(samples),
        "worker_restarted": len(pids) > 1,
        "target_mb": TARGET_SOAK_GROWTH_MB,
        "target_pass": growth <= TARGET_SOAK_GROWTH_MB,
        "target_applies": args.minutes >= TARGET_MINUTES,
    }


def report(data: dict[str, Any], rss: dict[str, Any], env: dict[str, str], args: argparse.Namespace) -> str:
    def mib(kb: float) -> str:
        return f"{kb / 1024:.2f} MiB ({mb(kb):.2f} MB)"

    log_state = "on" if args.request_log_on else "off"
    if args.request_log == "shipped":
        log_state += ", as shipped"
    lines = [
        f"# Phoenix soak, {env['date']}",
        "",
        f"`{env['command']}`",
        "",
        f"`phoenix serve` (default kernel, request log {log_state}) on core {SERVER_CPU}; two `wrk -t1 "
        f"-c{CONNECTIONS_PER_PATH}` on core {WRK_CPU}, one on /health and one on /ready "
        f"({CONNECTIONS_PER_PATH * len(PATHS)} keep-alive connections in all), first a {args.warmup} s "
        f"warm-up, then {args.minutes:g} min measured. The worker's VmRSS is read at the start of the "
        f"measured load, every {args.interval:g} s, at its end, and after {IDLE_AFTER_S} s idle. "
        "MB = 10^6 bytes, MiB = 2^20.",
        "",
        "## Memory (worker VmRSS)",
        "",
        "| reading | value |",
        "|---|---:|",
        f"| start (after warm-up) | {mib(rss['start_kb'])} |",
        f"| end | {mib(rss['end_kb'])} |",
        f"| max | {mib(rss['max_kb'])} |",
        f"| min | {mib(rss['min_kb'])} |",
        f"| growth (end - start) | {rss['growth_mb']:+.2f} MB |",
        f"| max - start | {rss['max_growth_mb']:+.2f} MB |",
        f"| least-squares slope | {rss['slope_mb_per_hour']:+.2f} MB/hour |",
        f"| after {IDLE_AFTER_S} s idle | {mib(rss['after_idle_kb'])} |",
        f"| before the warm-up (idle) | {mib(data['rss_idle_before_warmup']['worker_rss_kb'])} |",
    ]
    if rss["worker_restarted"]:
        lines += [
            "",
            "**The worker process changed during the soak** (a restart): the growth is not meaningful.",
        ]

    lines += ["", "## Target", "", "| target | measured | result |", "|---|---|---|"]
    result = "PASS" if rss["target_pass"] else "**MISS**"
    if not rss["target_applies"]:
        result += f" (the target is for {TARGET_MINUTES} min; this soak was {args.minutes:g} min)"
    lines.append(
        f"| RSS growth over {TARGET_MINUTES} minutes ≤ {TARGET_SOAK_GROWTH_MB:g} MB | "
        f"{rss['growth_mb']:+.2f} MB over {args.minutes:g} min | {result} |"
    )

    lines += [
        "",
        "## Load",
        "",
        "| phase | path | connections | requests | req/s | p50 ms | p99 ms | max ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, runs in (("warm-up", data["warmup"]), ("soak", data["runs"])):
        for path, r in runs.items():
            errors = sum(r["errors"].values())
            lines.append(
                f"| {phase} | {path} | {CONNECTIONS_PER_PATH} | {r['requests']:,.0f} | {r['rps']:,.0f} "
                f"| {r['latency_us']['p50'] / 1000:.3f} | {r['latency_us']['p99'] / 1000:.3f} "
                f"| {r['latency_us']['max'] / 1000:.1f} | {errors} |"
            )
        total_requests = sum(r["requests"] for r in runs.values())
        total_rps = sum(r["rps"] for r in runs.values())
        total_errors = sum(sum(r["errors"].values()) for r in runs.values())
        lines.append(
            f"| {phase} | both | {CONNECTIONS_PER_PATH * len(runs)} | {total_requests:,.0f} "
            f"| {total_rps:,.0f} | | | | {total_errors} |"
        )
    cpu = data["cpu"]
    lines.append("")
    lines.append(
        f"CPU during the soak, % of one core: server {cpu['server_pct']:.0f}, wrk {cpu['wrk_pct']:.0f}, "
        f"everything else {cpu['other_pct']:.0f} (well above 0 means the machine was shared and req/s is "
        f"low; machine busy {data['busy_pct_before']:.0f}% of a core just before the warm-up)."
    )
    lines.append("")
    lines.append(
        "Server output (request log included) during the whole run: "
        f"{data['server_log_bytes'] / 1e6:,.1f} MB."
    )

    samples = data["samples"]
    step = max(1, -(-len(samples) // MAX_SAMPLE_ROWS))
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    lines += [
        "",
        "## RSS samples" + (f" (every {step}th; the JSON has all)" if step > 1 else ""),
        "",
        "| t (s) | worker VmRSS MiB | change from start MB | main process VmRSS MiB |",
        "|---:|---:|---:|---:|",
    ]
    for s in shown:
        lines.append(
            f"| {s['t_s']:.0f} | {s['worker_rss_kb'] / 1024:.2f} "
            f"| {mb(s['worker_rss_kb'] - rss['start_kb']):+.2f} | {s['main_rss_kb'] / 1024:.2f} |"
        )
    lines += machine_section(env)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0, help="measured soak length (default 5)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up seconds, same load (default 30)")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="seconds between RSS samples (default 10)"
    )
    parser.add_argument(
        "--request-log",
        choices=["shipped", "on", "off"],
        default="shipped",
        help="Phoenix's request log: as shipped (the default setting), or forced on or off",
    )
    parser.add_argument("--out", type=Path, default=BENCHES / "results", help="report directory")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.warmup < 1 or args.interval <= 0:
        parser.error("--minutes, --warmup and --interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare_load_run(CONNECTIONS_PER_PATH * len(PATHS))
    from phoenix.config import DEFAULTS  # the request log Phoenix ships with

    args.request_log_on = DEFAULTS.request_log if args.request_log == "shipped" else args.request_log == "on"
    started = dt.datetime.now()
    env = run_env(started, nofile=nofile)
    with tempfile.TemporaryDirectory(prefix="phoenix-soak-") as tmp:
        data = soak(args, Path(tmp))
    env["loadavg_after"] = Path("/proc/loadavg").read_text().strip()
    rss = summarize(data, args)
    stem = args.out / f"soak-{started.strftime('%Y-%m-%d-%H%M%S')}"
    raw = {
        "machine": env,
        "args": vars(args) | {"out": str(args.out)},
        "request_log": "on" if args.request_log_on else "off",
        "rss": rss,
        **data,
    }
    save_report(stem, report(data, rss, env, args), raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
