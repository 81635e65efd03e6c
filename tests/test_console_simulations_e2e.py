"""Simulation jobs in the console, in a real browser (SPEC §12.5): an editor starts a job from
the review page, watches its progress bar fill (the page polls), and reads the sampled report
with its intervals. A real `regionlock worker` process runs the job."""

from __future__ import annotations

import re

from tests.fleet import load_fleet
from tests.test_console_e2e import (  # noqa: F401  (fixtures)
    browser,
    expect,
    live_server,
    page,
    pytestmark,
    shot,
    sign_in,
)
from tests.test_simulation_jobs import start_worker

FLEET, RUSSIA, SAMPLE = 100_000, 8_000, 60_000


def test_editor_runs_a_simulation_job_and_reads_its_report(
    live_server, page, tokens, redis, redis_url, tmp_path
):
    load_fleet(redis, FLEET, RUSSIA)
    sign_in(page, live_server, tokens["editor"])
    expect(page).to_have_url(re.compile(r"/console/policy/edit$"))
    text = page.input_value("#bundle-text")
    page.fill("#bundle-text", text.replace("regions: [CU,", "regions: [RU, CU,", 1))
    expect(page.locator("#editor-status")).to_have_text("✓ Valid bundle")
    page.click("button:has-text('Review and publish')")
    expect(page.locator("h1")).to_have_text("Review before publishing")

    page.fill("#simulation-sample", "60,000")
    page.click("button:has-text('Start a simulation job')")
    expect(page.locator("h1")).to_have_text("Simulation job")
    expect(page.locator("[data-job-state]")).to_have_text("queued")

    worker = start_worker(
        redis_url, tmp_path, REGIONLOCK_SIMULATION_BATCH="1000", REGIONLOCK_SIMULATION_LEASE_S="5"
    )
    try:
        # The bar moves while the job runs: the page polls, nobody reloads it.
        page.wait_for_function(
            "() => { const bar = document.querySelector('[data-job-progress]');"
            " return bar && bar.max == 60000 && bar.value > 0 && bar.value < bar.max; }",
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
    expect(page.locator("[data-job-count]")).to_have_text("60,000 of 60,000 devices")
    expect(report).to_contain_text("uniform sample of 60,000 of the 100,000 recorded devices")
    expect(report.locator("table.intervals")).to_contain_text("allow")
    low, high = (
        int(n.replace(",", ""))
        for n in report.locator("table.intervals td[data-label='95 % interval']")
        .inner_text()
        .split(" – ")
    )
    assert low <= RUSSIA <= high
    expect(report).to_contain_text("the safety brake would refuse this publish")
    shot(page, "simulation-job-report")

    page.click("a:has-text('simulation jobs')")
    expect(page.locator("table.versions tbody tr")).to_have_count(1)
    expect(page.locator("table.versions")).to_contain_text("done")
