"""The README's picture of the status page: ``benches/results/status-page.png``.

Serves the default kernel plus a warning and a failing subsystem (``tests.apps:status_showcase``, whose
``payments_api`` passes 20 runs and then fails), asks ``/ready`` every 200 ms for 30 rounds as a readiness
probe would (each round runs the Python checks; the native ones report every second on their own), then
has Debian's headless ``chromium`` (installed with apt-get when missing) take the picture. Run:

    make screenshot          # or: python benches/status_screenshot.py [--out PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from http_harness import BENCHES, HOST, REPO, ServerSpec, ensure_apt, http_get, running

PROBE_ROUNDS = 30
PROBE_PERIOD_S = 0.2
# Wide enough for every column, tall enough for five subsystems.
WINDOW = "1200,620"
# Virtual time the page gets to fetch its data and draw it before the picture is taken.
PAGE_BUDGET_MS = 3000


def log(message: str) -> None:
    print(f"[screenshot] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=BENCHES / "results" / "status-page.png")
    args = parser.parse_args()
    chromium = ensure_apt("chromium", "chromium")
    phoenix = str(Path(sys.executable).parent / "phoenix")
    with tempfile.TemporaryDirectory(prefix="phoenix-status-") as tmp:
        workdir = Path(tmp)
        spec = ServerSpec(
            name="phoenix status showcase",
            argv=[phoenix, "serve", "--app", "tests.apps:status_showcase", "--port", "{port}"],
            endpoints=["/health", "/startup"],  # /startup: the native subsystems are up
            env={"PYTHONPATH": str(REPO)},
            cwd=workdir,  # the default kernel's ./phoenix-data goes here
        )
        with running(spec, workdir) as server:
            server.wait_ready()
            log(f"asking /ready {PROBE_ROUNDS} times, every {PROBE_PERIOD_S} s")
            for _ in range(PROBE_ROUNDS):
                http_get(server.port, "/ready")
                time.sleep(PROBE_PERIOD_S)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
            argv += [f"--window-size={WINDOW}", f"--virtual-time-budget={PAGE_BUDGET_MS}"]
            argv += [f"--screenshot={args.out.resolve()}", f"http://{HOST}:{server.port}/status"]
            # Chromium's stderr is D-Bus noise on a machine without a session bus.
            subprocess.run(argv, check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
