"""The web console in a real browser: headless Chromium driven by Playwright, against the app
served by a real HTTP server thread.

Needs Debian's Chromium (/usr/bin/chromium) and the playwright package; Playwright's own browser
download is never used. REGIONLOCK_SCREENSHOTS=1 also saves the pages shown in the README under
docs/screenshots/ (laptop and phone widths).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.imeis import HK, UNKNOWN

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

CHROMIUM = os.environ.get("REGIONLOCK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.skipif(
    sync_playwright is None or not os.path.exists(CHROMIUM),
    reason="browser tests need Chromium and Playwright: `apt-get install chromium` "
    "(Debian's package, /usr/bin/chromium) and `make install` (installs playwright)",
)


@pytest.fixture
def live_server(make_app):
    """The app on a real HTTP server in a thread, on a free loopback port."""
    app = make_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser():
    """One headless Debian Chromium for the module."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies) at laptop size."""
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def api(base: str, method: str, path: str, token: str, body: dict | None = None) -> dict:
    """Call the JSON API over real HTTP."""
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def shot(page: Page, name: str) -> None:
    """With REGIONLOCK_SCREENSHOTS=1: save the page at laptop and phone widths."""
    if os.environ.get("REGIONLOCK_SCREENSHOTS") != "1":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-laptop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(LAPTOP)


def sign_in(page: Page, base: str, token: str) -> None:
    """Sign in through the form."""
    page.goto(base + "/console/")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    page.fill("#token", token)
    page.click("button:has-text('Sign in')")
    expect(page.locator(".flashes")).to_contain_text("Signed in as")


def test_agent_unlocks_a_locked_device(live_server, page, tokens):
    base = live_server
    # A Hong Kong phone activated on a US network: a gray import, locked.
    first = api(
        base,
        "POST",
        "/v1/checkin",
        tokens["device"],
        {"imei": HK, "sim": {"network": "310260"}, "model": "M2101K6G"},
    )
    assert first["verdict"] == "lock"

    page.goto(base + "/console/sign-in")
    shot(page, "sign-in")
    sign_in(page, base, tokens["agent"])
    expect(page.locator("nav.sections a")).to_have_text(["Devices", "Policy"])

    # Pasted the way tickets write it: with spaces.
    page.fill("#imei-search", f"{HK[:2]} {HK[2:8]} {HK[8:14]} {HK[14]}")
    page.click("button:has-text('Look up')")
    expect(page).to_have_url(re.compile(f"/console/devices/{HK}$"))
    expect(page.locator(".verdict-card h2")).to_have_text("Locked")
    expect(page.locator(".reasons")).to_contain_text("gray-market")
    expect(page.locator(".reasons")).to_contain_text("Global Mobile HK Ltd")
    network_row = page.locator("table.evidence tr", has_text="Mobile network")
    expect(network_row).to_contain_text("US")
    expect(network_row).to_contain_text("gray-market")
    shot(page, "device-locked")

    page.fill("#unlock-reason", "proof of purchase in Hong Kong")
    page.fill("#unlock-ticket", "SUP-42")
    page.select_option("#unlock-expires", label="7 days")
    page.click("button:has-text('Review unlock')")
    expect(page.locator("h1")).to_contain_text("Unlock")
    expect(page.locator(".confirm")).to_contain_text("7 days")
    shot(page, "unlock-confirm")
    page.click("button:has-text('Yes, unlock')")
    expect(page.locator(".flashes")).to_contain_text("Unlocked until")

    # The phone's next check-in is allowed, and the page says so after it.
    after = api(
        base, "POST", "/v1/checkin", tokens["device"], {"imei": HK, "sim": {"network": "310260"}}
    )
    assert after["verdict"] == "allow"
    page.reload()
    expect(page.locator(".verdict-card h2")).to_have_text("Allowed")
    expect(page.locator("#override")).to_contain_text("proof of purchase in Hong Kong")
    expect(page.locator("table.history tbody tr")).to_have_count(2)
    shot(page, "device-unlocked")


def test_agent_is_told_a_sanctions_lock_is_for_compliance(live_server, page, tokens):
    base = live_server
    api(
        base,
        "POST",
        "/v1/checkin",
        tokens["device"],
        {"imei": UNKNOWN, "sim": {"network": "36801"}, "locale": "es-CU"},
    )
    sign_in(page, base, tokens["agent"])
    page.goto(f"{base}/console/devices/{UNKNOWN}")
    expect(page.locator(".reasons")).to_contain_text("CU (Cuba) is a sanctioned region")
    # What the phone shows: its lock screen in Spanish, and its offline countdown (SPEC §10, §11).
    expect(page.locator("#phone-screen .lock-screen")).to_contain_text(
        "Este teléfono no puede usarse en esta región."
    )
    expect(page.locator("#phone-screen .offline-left")).to_contain_text("29 days")
    expect(page.locator("#unlock .scope-note")).to_contain_text("Only a compliance officer")
    page.fill("#unlock-reason", "customer says they only visited")
    page.click("button:has-text('Review unlock')")
    expect(page.locator("#unlock .scope-error")).to_contain_text(
        "Only a compliance officer can lift a sanctioned-region lock"
    )
    # What the agent typed is kept, so escalating loses nothing.
    expect(page.locator("#unlock-reason")).to_have_value("customer says they only visited")
    shot(page, "sanctions-scope")

    page.fill("#imei-search", HK)
    page.click("button:has-text('Look up')")
    expect(page.locator("h1")).to_contain_text("No record for")
    shot(page, "device-not-found")


def test_editor_shows_errors_as_you_type_and_publishes(live_server, page, tokens):
    base = live_server
    device = tokens["device"]
    api(base, "POST", "/v1/checkin", device, {"imei": HK, "sim": {"network": "45400"}})
    # A phone of no distributor on a Belarusian network: allowed today.
    before = api(
        base, "POST", "/v1/checkin", device, {"imei": UNKNOWN, "sim": {"network": "25701"}}
    )
    assert before["verdict"] == "allow"

    sign_in(page, base, tokens["editor"])
    # An editor starts in the editor, and sees no device or audit sections (the fleet
    # overview, yes: SPEC §14).
    expect(page).to_have_url(re.compile(r"/console/policy/edit$"))
    expect(page.locator("nav.sections a")).to_have_text(["Policy", "Approvals", "Overview"])
    expect(page.locator("#editor-status")).to_have_text("✓ Valid bundle")

    text = page.input_value("#bundle-text")
    lines = text.splitlines()
    regions_line = next(i for i, line in enumerate(lines, 1) if "regions:" in line)
    page.fill("#bundle-text", text.replace("regions: [CU,", "regions: [XX,", 1))
    problem = page.locator("#problems li").first
    expect(problem).to_contain_text(f"Line {regions_line}")
    expect(problem).to_contain_text("rules.0.regions.0")
    expect(problem).to_contain_text("XX")
    expect(page.locator("#editor-status")).to_have_text("1 problem")
    expect(page.locator(f"#gutter span.err:text-is('{regions_line}')")).to_have_count(1)
    # The problem's line link selects that line in the text.
    problem.locator("button").click()
    selected = page.evaluate(
        "() => { const t = document.getElementById('bundle-text');"
        " return t.value.slice(t.selectionStart, t.selectionEnd); }"
    )
    assert "regions: [XX," in selected
    shot(page, "editor-error")

    # Fixed, and one more sanctioned country (Belarus): valid again.
    page.fill("#bundle-text", text.replace("regions: [CU,", "regions: [BY, CU,", 1))
    expect(page.locator("#editor-status")).to_have_text("✓ Valid bundle")
    expect(page.locator("#problems li")).to_have_count(0)
    page.click("#simulate-btn")
    expect(page.locator("#impact")).to_contain_text("devices replayed")
    expect(page.locator("#impact .change-list")).to_contain_text(UNKNOWN)
    shot(page, "editor-impact")

    page.click("button:has-text('Review and publish')")
    expect(page.locator("h1")).to_have_text("Review before publishing")
    expect(page.locator("table.diff")).to_contain_text("BY")
    expect(page.locator("table.changes")).to_contain_text(UNKNOWN)
    page.fill("#publish-note", "sanction Belarus")
    shot(page, "publish-review")

    # One of two recorded phones would newly lock: the safety brake refuses...
    page.click("button:has-text('Publish version 2')")
    expect(page.locator(".brake")).to_contain_text("would go from allow to lock")
    assert api(base, "GET", "/v1/policy", tokens["editor"])["version"] == 1
    # ...until the editor says it is intended.
    page.check("input[name=force]")
    page.click("button:has-text('Publish version 2')")
    expect(page.locator(".flashes")).to_contain_text("Published version 2")
    expect(page.locator(".flashes")).to_contain_text("safety brake overridden")

    active = api(base, "GET", "/v1/policy", tokens["editor"])
    assert active["version"] == 2 and "BY" in active["rules"][0]["regions"]
    # Workers pick a new version up within a second (SPEC §6).
    deadline = time.monotonic() + 3
    while True:
        after = api(
            base, "POST", "/v1/checkin", device, {"imei": UNKNOWN, "sim": {"network": "25701"}}
        )
        if after["policy_version"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after["verdict"] == "lock" and after["policy_version"] == 2
    shot(page, "policy")
    page.click("a:has-text('changes')")
    expect(page.locator("table.diff td.add")).to_contain_text(["BY"])
    shot(page, "policy-compare")


def test_auditor_filters_the_audit_trail(live_server, page, tokens):
    base = live_server
    api(base, "POST", "/v1/checkin", tokens["device"], {"imei": HK, "sim": {"network": "310260"}})
    api(
        base,
        "POST",
        f"/v1/devices/{HK}/unlock",
        tokens["agent"],
        {"reason": "receipt from Hong Kong", "ticket": "SUP-7"},
    )
    api(base, "POST", f"/v1/devices/{HK}/lock", tokens["compliance"], {"reason": "fraud report"})

    sign_in(page, base, tokens["auditor"])
    expect(page).to_have_url(re.compile(r"/console/audit$"))
    # The lock, the unlock and the seed bundle's publish as version 1.
    expect(page.locator("table.audit tbody tr")).to_have_count(3)
    page.fill("#f-actor", "test-agent")
    page.click("button:has-text('Filter')")
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("device.unlock")
    expect(rows.first).to_contain_text("SUP-7")
    page.click("a:has-text('Clear')")
    expect(page.locator("table.audit tbody tr")).to_have_count(3)
    shot(page, "audit")

    # Signing out ends the session: the console asks for a token again.
    page.click("button:has-text('Sign out')")
    expect(page.locator(".flashes")).to_contain_text("Signed out")
    page.goto(base + "/console/audit")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))


def test_api_docs_page_works_offline_from_the_service_alone(live_server, page):
    """/docs renders Swagger UI with every operation, and no request leaves for another origin
    (issue 12.14: the assets were loaded unpinned from a CDN)."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.goto(live_server + "/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    expect(page.locator("#swagger-ui")).to_contain_text("/v1/checkin")
    expect(page.locator("#swagger-ui")).to_contain_text("/v1/devices/{imei}/unlock")
    assert requested, "the page made no request at all"
    foreign = [url for url in requested if not url.startswith(live_server + "/")]
    assert foreign == []
    # A CSP violation (an inline script, a foreign asset) would show as a console error.
    assert not [e for e in errors if "Content Security Policy" in e]


def test_a_sanctions_weakening_waits_for_a_compliance_officer(live_server, page, tokens):
    base = live_server
    sign_in(page, base, tokens["editor"])
    expect(page.locator("#editor-status")).to_have_text("✓ Valid bundle")
    text = page.input_value("#bundle-text")
    page.fill("#bundle-text", text.replace("regions: [CU, ", "regions: [", 1))
    expect(page.locator("#editor-status")).to_have_text("✓ Valid bundle")
    page.click("button:has-text('Review and publish')")
    page.fill("#publish-note", "Cuba is no longer sanctioned")
    page.click("button:has-text('Publish version 2')")
    # Not published: the editor lands on the approvals page, told why.
    expect(page).to_have_url(re.compile(r"/console/policy/approvals#a-[0-9a-f]{16}$"))
    expect(page.locator(".flashes")).to_contain_text("Not published: this weakens sanctions")
    request = page.locator("section.approval")
    expect(request).to_have_count(1)
    expect(request.locator(".weakenings")).to_contain_text("sanctions: region CU removed")
    expect(request.locator("table.diff td.del")).to_contain_text(["regions: [CU, IR"])
    expect(request.locator("button:has-text('Approve')")).to_have_count(0)
    expect(request.locator("button:has-text('Withdraw request')")).to_have_count(1)
    assert api(base, "GET", "/v1/policy", tokens["editor"])["version"] == 1
    page.click("button:has-text('Sign out')")

    sign_in(page, base, tokens["compliance"])
    page.click("nav.sections a:has-text('Approvals')")
    request = page.locator("section.approval")
    expect(request).to_contain_text("Requested")
    expect(request).to_contain_text("test-editor")
    expect(request.locator("table.diff td.add")).to_contain_text(["regions: [IR"])
    page.fill("section.approval input[name=note]", "checked with counsel")
    shot(page, "approvals")
    request.locator("button:has-text('Approve and publish')").click()
    expect(page.locator(".flashes")).to_contain_text("Approved: version 2 is published")
    active = api(base, "GET", "/v1/policy", tokens["editor"])
    assert active["version"] == 2 and "CU" not in active["rules"][0]["regions"]
    assert active["approved_by"] == "test-compliance" and active["published_by"] == "test-editor"


# --- simulation jobs (SPEC §12.5) ---------------------------------------------------------------

SIM_FLEET, SIM_RUSSIA = 50_000, 4_000


def test_editor_runs_a_simulation_job_and_reads_its_report(
    live_server, page, tokens, redis, redis_url, tmp_path
):
    """Simulation jobs (SPEC §12.5): an editor starts a job from the review page, watches its
    progress bar fill (the page polls), and reads the sampled report with its intervals; a real
    `regionlock worker` process runs the job."""
    from tests.fleet import load_fleet
    from tests.test_simulation_jobs import start_worker

    load_fleet(redis, SIM_FLEET, SIM_RUSSIA)
    sign_in(page, live_server, tokens["editor"])
    expect(page).to_have_url(re.compile(r"/console/policy/edit$"))
    text = page.input_value("#bundle-text")
    page.fill("#bundle-text", text.replace("regions: [CU,", "regions: [RU, CU,", 1))
    expect(page.locator("#editor-status")).to_have_text("✓ Valid bundle")
    # The review page replays every device in the request: seconds on a busy machine.
    page.click("button:has-text('Review and publish')", timeout=60_000)
    expect(page.locator("h1")).to_have_text("Review before publishing", timeout=60_000)

    page.fill("#simulation-sample", "40,000")
    page.click("button:has-text('Start a simulation job')", timeout=60_000)
    expect(page.locator("h1")).to_have_text("Simulation job")
    expect(page.locator("[data-job-state]")).to_have_text("queued")

    worker = start_worker(
        redis_url, tmp_path, REGIONLOCK_SIMULATION_BATCH="500", REGIONLOCK_SIMULATION_LEASE_S="5"
    )
    try:
        # The bar moves while the job runs: the page polls, nobody reloads it.
        page.wait_for_function(
            "() => { const bar = document.querySelector('[data-job-progress]');"
            " return bar && bar.max == 40000 && bar.value > 0 && bar.value < bar.max; }",
            timeout=60_000,
        )
        expect(page.locator("[data-job-state]")).to_have_text("running")
        shot(page, "simulation-job-progress")
        # Done: the page reloads itself with the report.
        report = page.locator("#job-report")
        expect(report).to_be_visible(timeout=60_000)
    finally:
        worker.terminate()
        worker.wait(10)
    expect(page.locator("[data-job-state]")).to_have_text("done")
    expect(page.locator("[data-job-count]")).to_have_text("40,000 of 40,000 devices")
    expect(report).to_contain_text("uniform sample of 40,000 of the 50,000 recorded devices")
    expect(report.locator("table.intervals")).to_contain_text("allow")
    low, high = (
        int(n.replace(",", ""))
        for n in report.locator("table.intervals td[data-label='95 % interval']")
        .inner_text()
        .split(" – ")
    )
    assert low <= SIM_RUSSIA <= high
    expect(report).to_contain_text("the safety brake would refuse this publish")
    shot(page, "simulation-job-report")

    page.click("a:has-text('simulation jobs')")
    expect(page.locator("table.versions tbody tr")).to_have_count(1)
    expect(page.locator("table.versions")).to_contain_text("done")
