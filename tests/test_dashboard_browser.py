"""The dashboard in a real browser: headless Chromium, driven by Playwright, on loopback.

A person opens the gateway's page, enters their token, sees the campaign's task servers,
submits a task and watches its result appear over the WebSocket. Uses Debian's Chromium
(``/usr/bin/chromium``, installed by ``scripts/system-deps.sh``); Playwright never downloads
a browser. Skipped when Chromium is missing, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    ALICE,
    WAIT,
    GatewayProcess,
    TaskServerProcess,
    methods_served,
    wait_until,
)

from colmena_core.testing.brokers import ThrowawayCampaign

pytestmark = pytest.mark.timeout(120)

CHROMIUM = Path(os.environ.get("COLMENA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI must run the browser test: see scripts/system-deps.sh)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"Chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def gateway(rabbitmq_url: str) -> Iterator[GatewayProcess]:
    with ThrowawayCampaign(rabbitmq_url, "dashboard") as campaign:
        campaign.methods.update({"add", "echo", "fail", "noop"})
        campaign.clients["api-alice"] = {"default", "extra"}
        server = TaskServerProcess(campaign.url, campaign.name).start()
        gateway = GatewayProcess(campaign.url, campaign.name).start()
        try:
            wait_until(lambda: "add" in methods_served(gateway.base_url), "the methods")
            yield gateway
        finally:
            gateway.close()
            server.close()


def test_dashboard_shows_status_and_a_live_result(
    browser: Any, gateway: GatewayProcess, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.set_default_timeout(WAIT * 1000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(gateway.base_url + "/")
        assert page.title() == "Colmena gateway"
        page.fill("#token", ALICE)
        page.click("#connect")
        page.wait_for_selector("#connection.open")
        page.wait_for_selector("#servers tbody tr")
        assert "add" in page.inner_text("#servers")
        assert page.inner_text("#broker") == "connected"

        page.fill("#method", "add")
        page.fill("#args", "[20, 22]")
        page.click("#submit button")
        page.wait_for_selector("#submitted[data-task-id]")
        task_id = page.get_attribute("#submitted", "data-task-id")
        row = page.wait_for_selector(f"tr.result[data-task-id='{task_id}']")
        assert row is not None
        assert "success" in row.inner_text() and "42" in row.inner_text()
        assert page.inner_text("#result-count") == "1"
        page.screenshot(path=str(tmp_path / "dashboard.png"))
    finally:
        page.close()
    assert not errors
    # The dashboard acknowledged the result it showed: nothing waits for alice any more
    wait_until(
        lambda: sum(_status(gateway)["results_waiting"].values()) == 0,
        "the result to be acknowledged",
    )


def test_a_wrong_token_is_refused(browser: Any, gateway: GatewayProcess) -> None:
    page = browser.new_page()
    page.set_default_timeout(WAIT * 1000)
    try:
        page.goto(gateway.base_url + "/")
        page.fill("#token", "not-the-right-token")
        page.click("#connect")
        page.wait_for_selector("#connection.error")
        page.wait_for_selector("#status-error:not([hidden])")
        assert "401" in page.inner_text("#status-error")
    finally:
        page.close()


def _status(gateway: GatewayProcess) -> dict[str, Any]:
    answer = httpx.get(
        f"{gateway.base_url}/api/v1/status", headers={"Authorization": f"Bearer {ALICE}"}
    )
    return dict(answer.json())
