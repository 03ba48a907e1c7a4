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
          return {x: box.left + bar.x, y: box.top + (bar.y + bar.base) / 2, count: values[i]};
        }"""
    )
    page.mouse.click(point["x"], point["y"])
    expect(page).to_have_url(re.compile(r"/\?range=custom&since=[^&]+&until="))
    expect(page.locator("#runs-rows tr.run-row")).to_have_count(point["count"])
    assert not [p for p in problems if "WebSocket" not in p], problems
