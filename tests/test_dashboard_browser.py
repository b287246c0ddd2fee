"""The dashboard in a real browser: headless Chromium, driven by Playwright, on loopback.

A real campaign runs (a task server, a thinker of its own, the gateway, on the test broker)
while an operator opens the console with the address ``colmena launch`` prints
(``/#token=...``): the thinker's tasks appear in the table, the charts get drawn, dead
letters can be requeued and purged, and errors are readable. Screenshots are compared for
layout (panels visible, inside the viewport, not overlapping), not pixels.

Uses Debian's Chromium (``/usr/bin/chromium``, installed by ``scripts/system-deps.sh``);
Playwright never downloads a browser. Skipped when Chromium is missing, except in CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
from gateway_support import (
    ALICE,
    BOB,
    WAIT,
    GatewayProcess,
    ServiceProcess,
    TaskServerProcess,
    methods_served,
    wait_until,
)

from colmena_core.models import Result, SerializationMethod
from colmena_core.models.wire import encode_result
from colmena_core.queue.rabbitmq import CampaignNames
from colmena_core.testing.brokers import ThrowawayCampaign
from colmena_core.testing.redis import in_ci

pytestmark = pytest.mark.timeout(180)

CHROMIUM = Path(os.environ.get("COLMENA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
THINKER = f"{Path(__file__).resolve().parent / 'service_apps.py'}:make_mixed"
THINKER_TASKS = 12
"""Tasks of the thinker's campaign: every fourth fails (``fail``), the others ``nap``."""

PANELS = [
    "#topbar",
    "#tiles",
    "#charts > .card:nth-child(1)",
    "#charts > .card:nth-child(2)",
    "#charts > .card:nth-child(3)",
    "#charts > .card:nth-child(4)",
    "#methods-panel",
    "#servers-panel",
    "#results-panel",
    "#dead-panel",
    "#submit-panel",
]
CHARTS = ["chart-throughput", "chart-latency", "chart-utilisation", "chart-queues"]


def _unavailable(reason: str) -> None:
    if in_ci():
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
    """A gateway on a campaign whose own thinker ran its tasks (through the task server)."""
    with ThrowawayCampaign(rabbitmq_url, "dashboard") as campaign:
        campaign.methods.update({"add", "echo", "fail", "noop", "nap"})
        campaign.clients["api-alice"] = {"default", "extra"}
        campaign.clients["api-bob"] = {"default", "extra"}
        campaign.clients["thinker"] = {"work"}
        server = TaskServerProcess(campaign.url, campaign.name, methods="CAMPAIGN").start()
        gateway = GatewayProcess(campaign.url, campaign.name).start()
        thinker = ServiceProcess(
            [
                "thinker",
                f"--thinker-factory={THINKER}",
                "--topics=work",
                "--client-id=thinker",
                "--health-host=127.0.0.1",
                "--health-port=0",
            ],
            {
                "COLMENA_BROKER_URL": campaign.url,
                "COLMENA_CAMPAIGN": campaign.name,
                "COLMENA_TEST_COUNT": str(THINKER_TASKS),
                "COLMENA_TEST_NAP": "0.2",
            },
        )
        try:
            wait_until(lambda: "nap" in methods_served(gateway.base_url), "the methods")
            thinker.start()  # the gateway watches already: it sees every result
            assert thinker.process is not None
            assert thinker.process.wait(WAIT * 2) == 0, thinker.output()[-3000:]
            yield gateway
        finally:
            thinker.close()
            gateway.close()
            server.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT * 1000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Answers 401 and 403 are logged by the browser as errors: only script errors count
    page.on("console", lambda m: errors.append(m.text) if _script_error(m) else None)
    yield page
    context.close()
    assert not errors, errors


def _script_error(message: Any) -> bool:
    return bool(message.type == "error" and "Failed to load resource" not in message.text)


def _sign_in_from_address(page: Any, gateway: GatewayProcess, token: str = ALICE) -> None:
    page.goto(f"{gateway.base_url}/#token={token}")
    page.wait_for_selector("#connection.ok")


def _rows(page: Any, where: str = "") -> int:
    return int(page.locator(f"#results tbody tr.result{where}:visible").count())


def _drawn(page: Any, canvas: str, colour: str = "") -> int:
    """Pixels of the plot area of ``canvas`` (below its legend) close to ``colour`` (a CSS
    hex colour or variable; by default any colour of the charts' palette)."""
    return int(
        page.evaluate(
            """([id, colour]) => {
                if (colour.startsWith("--")) colour = getComputedStyle(
                    document.documentElement).getPropertyValue(colour).trim();
                const rgb = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
                const wanted = (colour ? [colour] : Charts.PALETTE).map(rgb);
                const canvas = document.getElementById(id);
                const ratio = canvas.width / canvas.clientWidth;
                const top = Math.ceil(canvas.chart.plot.top * ratio);
                const data = canvas.getContext("2d").getImageData(
                    0, top, canvas.width, canvas.height - top).data;
                let count = 0;
                for (let i = 0; i < data.length; i += 4) {
                    if (data[i + 3] > 200 && wanted.some(
                        (want) => want.every((v, k) => Math.abs(data[i + k] - v) < 24)))
                        count += 1;
                }
                return count;
            }""",
            [canvas, colour],
        )
    )


def _assert_layout(page: Any, selectors: list[str]) -> None:
    """Each panel visible, with a size, inside the viewport's width, overlapping no other."""
    width = page.viewport_size["width"]
    boxes = {}
    for selector in selectors:
        locator = page.locator(selector)
        assert locator.is_visible(), f"{selector} is not visible"
        box = locator.bounding_box()
        assert box is not None and box["width"] > 50 and box["height"] > 20, (selector, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)
        boxes[selector] = box
    items = list(boxes.items())
    for i, (one, a) in enumerate(items):
        for other, b in items[i + 1 :]:
            overlap_x = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
            overlap_y = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
            if one == "#topbar" or other == "#topbar":  # sticky: above whatever scrolls under
                continue
            assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{one} overlaps {other}"
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")


def _contrast(page: Any, selector: str) -> float:
    """WCAG contrast ratio of an element's text against its own (or nearest) background."""
    return float(
        page.evaluate(
            """(selector) => {
                const node = document.querySelector(selector);
                const parse = (c) => c.match(/[\\d.]+/g).map(Number);
                let back = node;
                while (back && parse(getComputedStyle(back).backgroundColor)[3] === 0)
                    back = back.parentElement;
                const bg = parse(getComputedStyle(back || document.body).backgroundColor);
                const fg = parse(getComputedStyle(node).color);
                const lum = ([r, g, b]) => [r, g, b].map((v) => {
                    v /= 255;
                    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
                }).reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
                const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
                return (hi + 0.05) / (lo + 0.05);
            }""",
            selector,
        )
    )


def _status(gateway: GatewayProcess, token: str = ALICE) -> dict[str, Any]:
    answer = httpx.get(
        f"{gateway.base_url}/api/v1/status", headers={"Authorization": f"Bearer {token}"}
    )
    return dict(answer.json())


# -------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_console_shows_the_whole_campaign(
    page: Any, gateway: GatewayProcess, tmp_path: Path, scheme: str
) -> None:
    page.emulate_media(color_scheme=scheme)
    _sign_in_from_address(page, gateway)
    # Signed in once: the token left the address for this tab's storage
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('colmena-token')") == ALICE
    assert page.is_hidden("#login-panel")

    # The thinker's tasks (not submitted through the gateway) fill the table
    page.wait_for_function(
        "(n) => document.querySelectorAll('#results tbody tr.result').length >= n",
        arg=THINKER_TASKS,
    )
    assert "thinker / work" in page.inner_text("#results tbody")
    assert _rows(page, ".failed-row") == THINKER_TASKS // 4
    assert "ValueError" in page.inner_text("#results tbody tr.failed-row")

    # Success and failure per method
    page.wait_for_selector("#methods-table tr[data-method='fail']")
    nap = page.inner_text("#methods-table tr[data-method='nap']").split()
    fail = page.inner_text("#methods-table tr[data-method='fail']").split()
    assert nap[:3] == ["nap", str(THINKER_TASKS - THINKER_TASKS // 4), "0"]
    assert fail[:3] == ["fail", "0", str(THINKER_TASKS // 4)]

    # Every chart drawn with data: throughput bars, latency, utilisation and queue lines
    for chart in CHARTS:
        page.wait_for_function(
            "(id) => Number(document.getElementById(id).dataset.points) > 0",
            arg=chart,
            polling=500,
        )
    assert _drawn(page, "chart-throughput", "--ok") > 30
    assert _drawn(page, "chart-throughput", "--bad") > 10
    for chart in CHARTS[1:]:
        assert _drawn(page, chart) > 8, f"{chart} shows no data"
    assert page.inner_text("#servers-count") == "1"
    assert "nap" in page.inner_text("#servers")

    # Search and the failures filter
    page.fill("#search", "bad input")
    assert _rows(page) == THINKER_TASKS // 4
    assert page.inner_text("#result-count").startswith(f"{THINKER_TASKS // 4} of ")
    page.fill("#search", "no such task anywhere")
    assert _rows(page) == 0 and page.is_visible("#results-empty")
    page.fill("#search", "")
    page.check("#failures-only")
    assert _rows(page) == THINKER_TASKS // 4
    page.uncheck("#failures-only")

    _assert_layout(page, PANELS)
    page.evaluate("scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / f"console-{scheme}.png"), full_page=True)
    page.set_viewport_size({"width": 1024, "height": 768})
    _assert_layout(page, PANELS)

    # Signed in once: a reload keeps the session
    page.reload()
    page.wait_for_selector("#connection.ok")
    assert page.is_hidden("#login-panel")


def test_receiving_a_submitted_task(page: Any, gateway: GatewayProcess) -> None:
    _sign_in_from_address(page, gateway)
    page.select_option("#mode", "receive")
    page.wait_for_selector("#connection.ok")
    page.click("#submit-panel summary")
    page.fill("#method", "add")
    page.fill("#args", "[20, 22]")
    page.click("#submit button")
    page.wait_for_selector("#submitted[data-task-id]")
    task_id = page.get_attribute("#submitted", "data-task-id")
    row = page.wait_for_selector(f"tr.result[data-task-id='{task_id}']")
    assert row is not None
    assert "success" in row.inner_text() and "42" in row.inner_text()
    assert page.inner_text("#result-count") == "1"  # this client's results only
    # The dashboard acknowledged the result it showed: nothing waits for alice any more
    wait_until(
        lambda: sum(_status(gateway)["results_waiting"].values()) == 0,
        "the result to be acknowledged",
    )


def test_a_wrong_token_is_refused_readably(page: Any, gateway: GatewayProcess) -> None:
    page.goto(gateway.base_url + "/")
    page.wait_for_selector("#login-panel:not([hidden])")
    page.fill("#token", "not-the-right-token")
    page.click("#connect")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "401" in page.inner_text("#login-error")
    assert page.is_hidden("#console")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        assert _contrast(page, "#login-error") >= 4.5, scheme
        assert _contrast(page, "#connection") >= 4.5, scheme
    page.fill("#token", ALICE)
    page.click("#connect")
    page.wait_for_selector("#connection.ok")
    assert page.is_hidden("#login-panel")


def test_a_client_that_is_not_a_monitor_sees_its_own_results(
    page: Any, gateway: GatewayProcess
) -> None:
    _sign_in_from_address(page, gateway, BOB)
    page.wait_for_selector("#not-monitor:not([hidden])")
    assert "COLMENA_GATEWAY_MONITORS" in page.inner_text("#not-monitor")
    assert page.is_hidden("#charts") and page.is_hidden("#dead-panel")
    assert page.input_value("#mode") == "watch"
    assert _rows(page) == 0  # none of the thinker's results
    _assert_layout(page, ["#topbar", "#tiles", "#servers-panel", "#results-panel"])


def _dead_letter(gateway: GatewayProcess, body: bytes, reason: str) -> None:
    """Put ``body`` in the campaign's dead letters, as the broker does with ``reason``."""
    names = CampaignNames(gateway.env["COLMENA_CAMPAIGN"])
    connection = pika.BlockingConnection(pika.URLParameters(gateway.env["COLMENA_BROKER_URL"]))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            names.dead_exchange,
            "",
            body,
            pika.BasicProperties(delivery_mode=2, headers={"x-first-death-reason": reason}),
        )
    finally:
        connection.close()


def _request(a: int, b: int) -> Result:
    """A request of alice's for ``add``, as the gateway sends it."""
    request = Result(
        ((a, b), {}), method="add", topic="default", serialization_method=SerializationMethod.JSON
    )
    request.reply_to = "api-alice"
    request.serialize()
    return request


def test_dead_letters_are_requeued_and_purged_from_the_console(
    page: Any, gateway: GatewayProcess
) -> None:
    kept, requeued = _request(1, 2), _request(40, 2)
    _dead_letter(gateway, b"not a Colmena message", "rejected")
    for request in (kept, requeued):
        _dead_letter(gateway, encode_result(request), "delivery_limit")
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
    _sign_in_from_address(page, gateway)
    page.wait_for_function("() => document.querySelectorAll('#dead-letters tbody tr').length === 3")
    page.wait_for_selector("#dead-tile.alarm")
    # (a count read while the list is being read may miss some: wait for the full count)
    page.wait_for_function("() => document.getElementById('dead').textContent === '3'")
    assert "delivery_limit" in page.inner_text("#dead-letters")
    _assert_layout(page, ["#tiles", "#results-panel", "#dead-panel"])

    # One request goes back to its queue: it runs, and its result shows in the table
    page.click(f"#dead-letters tr[data-task-id='{requeued.task_id}'] button:text('requeue')")
    page.wait_for_selector("#dead-note:text('Requeued 1 dead letter')")
    row = page.wait_for_selector(f"#results tr.result[data-task-id='{requeued.task_id}']")
    assert row is not None and "42" in row.inner_text() and "success" in row.inner_text()
    page.wait_for_function("() => document.querySelectorAll('#dead-letters tbody tr').length === 2")

    # The rest, the undecodable one included, is purged
    page.click("#dead-purge")
    page.wait_for_selector("#dead-note:text('Purged 2 dead letter')")
    page.wait_for_selector("#dead-empty:visible")
    page.wait_for_function("() => document.getElementById('dead').textContent === '0'")
    assert page.is_disabled("#dead-purge") and page.is_disabled("#dead-requeue")
