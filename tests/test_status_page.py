"""End to end: the status page (`GET /status`) in a real browser.

Debian's headless Chromium, driven through Debian's chromium-driver by Selenium (both installed by the
test set-up when missing), loads the page from a running `phoenix serve` and the tests read the DOM it
draws from `/status?format=json`: each subsystem is an element with `data-subsystem` and `data-status`,
the overall status is `#overall` with its `data-status`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from .conftest import Server, serve_with_probe_port, wait_until
from .debian import ensure_command

APP = "tests.apps:status_page"
SHOWN = {"db": "pass", "cache": "warn", "switch": "pass"}
OVERALL = {"ready", "not_ready", "draining"}  # what the JSON's status can be

# What the page shows, read in one go: the overall status, the notice, and per subsystem its status, its
# visible text, the colour of its status label, and the status and tooltip of its newest history cell.
READ_PAGE = """
const overall = document.getElementById("overall");
const notice = document.getElementById("notice");
return {
  overall: overall.dataset.status,
  overall_text: overall.textContent,
  notice: notice.hidden ? "" : notice.textContent,
  subsystems: Object.fromEntries([...document.querySelectorAll("[data-subsystem]")].map((row) => {
    const cells = row.querySelectorAll(".strip > span[data-status]");
    const newest = cells[cells.length - 1];
    return [row.dataset.subsystem, {
      status: row.dataset.status,
      text: row.innerText,
      colour: getComputedStyle(row.querySelector(".badge")).color,
      newest_run: newest ? newest.dataset.status : null,
      newest_tooltip: newest ? newest.title : null,
    }];
  })),
};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium = ensure_command("chromium", "chromium")
    chromedriver = ensure_command("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: Selenium then looks for nothing to download.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: webdriver.Chrome, server: Server, fragment: str = "") -> None:
    # By way of a blank page: a URL differing only in its fragment would not load the page again.
    browser.get("about:blank")
    browser.get(f"http://127.0.0.1:{server.port}/status{fragment}")


def read_page(browser: webdriver.Chrome) -> dict[str, Any]:
    page: dict[str, Any] = browser.execute_script(READ_PAGE)
    return page


def statuses(page: dict[str, Any]) -> dict[str, str]:
    return {name: row["status"] for name, row in page["subsystems"].items()}


def wait_for_page(browser: webdriver.Chrome, server: Server, what: str, shows: Any) -> dict[str, Any]:
    """Reads the page until ``shows(page)`` is true (the page refreshes itself every 2 s)."""

    def shown() -> dict[str, Any] | None:
        page = read_page(browser)
        return page if shows(page) else None

    return wait_until(shown, what=f"the status page to show {what}", server=server)


def console_errors(browser: webdriver.Chrome) -> list[str]:
    """What the page logged as errors (a script error, a failed request) since this was last asked."""
    log: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in log if entry["level"] == "SEVERE"]


def test_the_page_shows_each_subsystem_and_a_failure_after_a_refresh(
    serve: Any, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    metric = tmp_path / "metric"
    metric.write_text("1.0")
    server = serve("--app", APP, env={"PHOENIX_TEST_METRIC": str(metric)})
    open_page(browser, server)
    page = wait_for_page(
        browser, server, f"{SHOWN} and ready", lambda p: statuses(p) == SHOWN and p["overall"] == "ready"
    )
    for name, row in page["subsystems"].items():
        assert name in row["text"], row
        assert SHOWN[name] in row["text"], row  # the status as a word, not by colour alone
    assert "0.90" in page["subsystems"]["db"]["text"]  # the metric, beside its threshold
    assert "0.50" in page["subsystems"]["db"]["text"]
    assert page["overall_text"] == "Ready"

    metric.write_text("0.1")
    page = wait_for_page(
        browser,
        server,
        "switch failing",
        lambda p: statuses(p) == {**SHOWN, "switch": "fail"} and p["overall"] == "not_ready",
    )
    switch = page["subsystems"]["switch"]
    assert switch["newest_run"] == "fail", switch
    assert "fail" in switch["newest_tooltip"], switch
    assert "0.10" in switch["newest_tooltip"], switch
    assert "0.10" in switch["text"], switch
    assert page["overall_text"] == "Not ready"
    # pass, warn and fail: each status has a colour of its own.
    assert len({row["colour"] for row in page["subsystems"].values()}) == 3, page
    screenshot = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert console_errors(browser) == []


def test_hidden_details_show_the_overall_status_and_no_subsystem(
    serve: Any, browser: webdriver.Chrome
) -> None:
    server = serve("--app", "tests.apps:private")  # details = "never", one subsystem: ping
    data = json.loads(server.request("/status?format=json").body)
    assert "subsystems" not in data, data
    open_page(browser, server)
    page = wait_for_page(browser, server, "its overall status", lambda p: p["overall"] in OVERALL)
    assert page["subsystems"] == {}
    assert "hidden" in page["notice"], page


def test_the_token_comes_from_the_fragment(serve: Any, browser: webdriver.Chrome) -> None:
    server = serve("--app", "tests.apps:guarded")  # details = "token", token "s3cret"
    open_page(browser, server, "#token=s3cret")
    wait_for_page(browser, server, "db with the token", lambda p: "db" in p["subsystems"])
    open_page(browser, server, "#token=wrong")
    page = wait_for_page(browser, server, "the details hidden", lambda p: p["notice"])
    assert page["subsystems"] == {}
    assert "not accepted" in page["notice"], page
    assert page["overall"] in OVERALL


def test_the_page_works_on_the_probe_port(serve: Any, browser: webdriver.Chrome, tmp_path: Path) -> None:
    metric = tmp_path / "metric"
    metric.write_text("1.0")
    _main, probe = serve_with_probe_port(serve, "--app", APP, env={"PHOENIX_TEST_METRIC": str(metric)})
    open_page(browser, probe)
    wait_for_page(browser, probe, f"{SHOWN} over the probe port", lambda p: statuses(p) == SHOWN)


def test_a_server_gone_away_is_said_plainly(serve: Any, browser: webdriver.Chrome) -> None:
    server = serve("--app", "tests.apps:private")
    open_page(browser, server)
    wait_for_page(browser, server, "its overall status", lambda p: p["overall"] in OVERALL)
    assert server.stop() == 0
    page = wait_for_page(browser, server, "the server unreachable", lambda p: p["overall"] == "unknown")
    assert "Cannot reach the server" in page["notice"], page
    assert page["overall_text"] == "Unknown"
