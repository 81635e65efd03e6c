"""The fleet overview (/console/overview, SPEC §14) in Debian's Chromium: figures made through
the real app (check-ins and an unlock over HTTP, the stats counters kept by their scripts),
the charts drawn by the vendored Chart.js, the world map, the distributors table, at laptop and
phone widths; no request leaves for another origin. REGIONLOCK_SCREENSHOTS=1 saves
docs/screenshots/overview-{laptop,phone}.png (1280 and 390 px)."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import Page, expect

from tests.imeis import EU, HK, HK2, UNKNOWN, UNKNOWN2
from tests.test_console_e2e import (  # noqa: F401  (fixtures)
    SHOTS,
    api,
    browser,
    live_server,
    pytestmark,
    sign_in,
)

LAPTOP_1280 = {"width": 1280, "height": 900}
PHONE_390 = {"width": 390, "height": 844}
SIMFEROPOL = {"lat": 44.952, "lon": 34.102}


@pytest.fixture
def page(browser):  # noqa: F811
    """A fresh context; the overview sums the stats shards of every day not yet rolled up,
    seconds on this shared test machine, hence a longer timeout than the console's pages."""
    context = browser.new_context(viewport=LAPTOP_1280)
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def make_fleet(base: str, tokens: dict) -> None:
    """Five phones locked for three reasons in four countries, then one unlocked by support."""
    device = tokens["device"]
    phones = [
        (UNKNOWN, {"sim": {"network": "36801"}}),  # on a Cuban network: sanctions, CU
        (UNKNOWN2, {"gps": SIMFEROPOL}),  # in Crimea: sanctions, UA-43 (country UA)
        (HK, {"sim": {"network": "310260"}}),  # hk-global phone in the US: gray import
        (HK2, {"sim": {"network": "20801"}}),  # hk-global phone in France
        (EU, {"sim": {"network": "310260"}}),  # eu-distri phone in the US
    ]
    for imei, body in phones:
        answer = api(base, "POST", "/v1/checkin", device, {"imei": imei, **body})
        assert answer["verdict"] == "lock", (imei, answer)
    api(
        base,
        "POST",
        f"/v1/devices/{HK}/unlock",
        tokens["agent"],
        {"reason": "proof of purchase in Hong Kong", "ticket": "SUP-7"},
    )


def fits_the_screen(page: Page) -> bool:
    return page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )


def test_compliance_officer_sees_the_fleet(live_server, page, tokens):  # noqa: F811
    base = live_server
    make_fleet(base, tokens)

    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.set_viewport_size(LAPTOP_1280)
    sign_in(page, base, tokens["compliance"])
    expect(page.locator("nav.sections a", has_text="Overview")).to_be_visible()
    page.click("nav.sections a:has-text('Overview')")
    expect(page).to_have_url(re.compile(r"/console/overview$"))
    expect(page.locator("h1")).to_have_text("Overview")

    # The figures: five phones locked today, one unlocked by support since.
    expect(page.locator("#fig-new-locks .figure-value")).to_have_text("5")
    expect(page.locator("#fig-locked-now .figure-value")).to_have_text("4")
    expect(page.locator("#fig-checkins .figure-value")).to_have_text("5")
    expect(page.locator("#fig-unlocks")).to_contain_text("1 support agent")

    # The charts are drawn by the vendored Chart.js, with today's bars.
    expect(page.locator("body")).to_have_attribute("data-charts-ready", "true")
    series = page.evaluate(
        """() => ["chart-checkins", "chart-locks"].map((id) => {
            const chart = Chart.getChart(document.getElementById(id));
            return chart.data.datasets.map((d) => [d.label, d.data[d.data.length - 1]]);
        })"""
    )
    assert series[0] == [["Check-ins", 5]]
    assert sorted(series[1]) == [["Outside territory", 3], ["Sanctioned region", 2]]
    box = page.locator("#chart-locks").bounding_box()
    assert box["width"] > 400 and box["height"] > 150

    # The map: shaded where phones were locked, the count in each country's title.
    def country(number: str):
        return page.locator(f"svg.world path[data-id='{number}']")

    expect(country("840")).to_have_attribute("data-count", "2")  # United States
    expect(country("840").locator("title")).to_have_text("United States of America: 2 new locks")
    expect(country("250")).to_have_attribute("data-count", "1")  # France
    expect(country("192")).to_have_attribute("data-count", "1")  # Cuba
    expect(country("804")).to_have_attribute("data-count", "1")  # Ukraine (Crimea)
    expect(country("643")).to_have_attribute("data-count", "0")  # Russia
    expect(country("840")).to_have_class(re.compile(r"\bshade-5\b"))
    expect(country("643")).to_have_class(re.compile(r"\bshade-0\b"))
    assert page.locator("svg.world path").count() > 170
    map_box = page.locator("svg.world").bounding_box()
    assert map_box["width"] > 1000

    # Distributors with phones outside their territory, most first.
    rows = page.locator("#distributors tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Global Mobile HK Ltd")
    expect(rows.nth(0).locator("td.num")).to_have_text(["2", "1"])  # 2 new, 1 still locked
    expect(rows.nth(1)).to_contain_text("EuroPhone Distribution SA")
    expect(page.locator("#locked-now")).to_contain_text("Sanctioned region")

    # The exports: a CSV download of the phones locked now.
    with page.expect_download() as download:
        page.click("#exports a:has-text('Locked devices')")
    lines = open(download.value.path()).read().splitlines()  # noqa: SIM115
    assert lines[0] == "imei,reason,region,distributor,locked_since,override"
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted([UNKNOWN, UNKNOWN2, HK2, EU])

    # Nothing from another origin, nothing the CSP refused.
    assert requested
    assert [url for url in requested if not url.startswith(base + "/")] == []
    assert any("/console/static/vendor/chart.js-4.6.1/" in url for url in requested)
    assert not [e for e in errors if "Content Security Policy" in e]
    assert fits_the_screen(page)
    shoot(page, "overview-laptop")

    # On a phone: one column, nothing wider than the screen, the charts still drawn.
    page.set_viewport_size(PHONE_390)
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-charts-ready", "true")
    assert fits_the_screen(page)
    assert page.locator("#chart-locks").bounding_box()["width"] > 250
    assert page.locator("svg.world").bounding_box()["width"] > 300
    shoot(page, "overview-phone")


def test_the_period_picker_and_a_bad_period(live_server, page, tokens):  # noqa: F811
    base = live_server
    api(
        base,
        "POST",
        "/v1/checkin",
        tokens["device"],
        {"imei": UNKNOWN, "sim": {"network": "36801"}},
    )
    sign_in(page, base, tokens["auditor"])
    page.goto(base + "/console/overview")
    expect(page.locator("#fig-new-locks .figure-value")).to_have_text("1")
    # A period that ended before today: no lock in it, the map all grey.
    page.fill("#p-from", "2026-01-01")
    page.fill("#p-to", "2026-01-31")
    page.click("button:has-text('Show')")
    expect(page).to_have_url(re.compile(r"from=2026-01-01&to=2026-01-31"))
    expect(page.locator(".page-head")).to_contain_text("2026-01-01 to 2026-01-31")
    expect(page.locator("#fig-new-locks .figure-value")).to_have_text("0")
    expect(page.locator("svg.world path.shade-0")).to_have_count(
        page.locator("svg.world path").count()
    )
    expect(page.locator("#map")).to_contain_text("No new locks in this period")
    # From after to: the default period, and a notice saying why.
    page.goto(base + "/console/overview?from=2026-02-01&to=2026-01-01")
    expect(page.locator("#period-problem")).to_contain_text("after")
    expect(page.locator("#fig-new-locks .figure-value")).to_have_text("1")


def test_an_agent_gets_the_403_page(live_server, page, tokens):  # noqa: F811
    sign_in(page, live_server, tokens["agent"])
    expect(page.locator("nav.sections a", has_text="Overview")).to_have_count(0)
    response = page.goto(live_server + "/console/overview")
    assert response.status == 403
    expect(page.locator("h1")).to_have_text("Not for your role")


def shoot(page: Page, name: str) -> None:
    """With REGIONLOCK_SCREENSHOTS=1: the whole page at its current width."""
    if os.environ.get("REGIONLOCK_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
