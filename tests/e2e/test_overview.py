"""The overview in Chromium: every chart draws data, a click lands on the filtered runs list."""

from __future__ import annotations

import random
import re
import time
import urllib.request

from playwright.sync_api import Browser, expect

from tests.e2e.conftest import LiveDashboard, log_in, watch_problems
from tests.tracing.spans import protobuf_body, record
from tests.tracing.test_rollups import HOUR, fleet

CHARTS = ["runs", "latency", "retries", "tokens", "failures", "by_model", "by_agent", "by_type"]


def test_overview_draws_every_chart_and_links_to_the_runs_list(
    live_dashboard: LiveDashboard, chromium: Browser, results_dir: object
) -> None:
    rng = random.Random(5)
    base = time.time_ns() - 7 * HOUR
    body = protobuf_body(record(lambda tracer: fleet(tracer, rng, 60, base_ns=base)))
    request = urllib.request.Request(
        f"{live_dashboard.url}/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200

    page = chromium.new_page(viewport={"width": 1440, "height": 900})
    problems = watch_problems(page, http_errors=False)
    log_in(page, live_dashboard)
    page.goto(f"{live_dashboard.url}/overview/?range=24h")
    for name in CHARTS:
        card = page.locator(f'[data-chart="{name}"]')
        expect(card).to_have_attribute("data-rendered", re.compile(r"^[1-9][0-9]*$"))
    expect(page.locator('[data-list="slowest"] tbody tr')).to_have_count(10)
    expect(page.locator('[data-list="expensive"] tbody tr')).to_have_count(10)
    expect(page.locator('[data-kpi="runs"] .kpi-value')).to_have_text("60")
    page.screenshot(path=f"{results_dir}/overview-1440.png", full_page=True)

    # The table view holds the same numbers.
    page.locator('[data-chart="runs"] [data-toggle-table]').click()
    expect(page.locator('[data-chart="runs"] .chart-table table')).to_be_visible()
    page.locator('[data-chart="runs"] [data-toggle-table]').click()

    # Click the tallest bar of the runs chart: the runs list for that bar.
    point = page.evaluate(
        """() => {
          const canvas = document.querySelector('[data-chart="runs"] canvas');
          const chart = Chart.getChart(canvas);
          const values = chart.data.datasets[0].data;
          const i = values.indexOf(Math.max(...values));
          const bar = chart.getDatasetMeta(0).data[i];
          const box = canvas.getBoundingClientRect();
          return {x: box.left + bar.x, y: box.top + (bar.y + bar.base) / 2, count: values[i],
                  status: chart.data.datasets[0].status};
        }"""
    )
    # No Temporal behind this dashboard: every run's status is unknown, and the
    # runs list takes that status as a filter (it was a form error once).
    assert point["status"] == "UNKNOWN"
    page.mouse.click(point["x"], point["y"])
    expect(page).to_have_url(re.compile(r"/\?range=custom&since=[^&]+&until=.*status=UNKNOWN"))
    expect(page.locator("#runs-rows tr.run-row")).to_have_count(point["count"])
    expect(page.locator("#filter-errors")).to_have_count(0)
    expect(page.locator("#id_status")).to_have_value("UNKNOWN")

    # The top failure message: the runs that had a failed attempt with it.
    page.go_back()
    expect(page.locator('[data-chart="failures"]')).to_have_attribute(
        "data-rendered", re.compile(r"^[1-9]")
    )
    page.locator('[data-chart="failures"] canvas').scroll_into_view_if_needed()
    bar = page.evaluate(
        """() => {
          const canvas = document.querySelector('[data-chart="failures"] canvas');
          const chart = Chart.getChart(canvas);
          const bar = chart.getDatasetMeta(0).data[0];
          const box = canvas.getBoundingClientRect();
          return {x: box.left + (bar.x + bar.base) / 2, y: box.top + bar.y,
                  message: JSON.parse(document.getElementById("overview-data").textContent)
                    .failures[0].message};
        }"""
    )
    page.mouse.click(bar["x"], bar["y"])
    expect(page).to_have_url(re.compile(r"/\?range=custom&.*failure="))
    expect(page.locator("#id_failure")).to_have_value(bar["message"])
    expect(page.locator("#filter-errors")).to_have_count(0)
    assert page.locator("#runs-rows tr.run-row").count() >= 1
    page.screenshot(path=f"{results_dir}/overview-failure-runs-1440.png")
    assert not [p for p in problems if "WebSocket" not in p], problems
