"""The strict Content-Security-Policy in Chromium: no violation anywhere, and JS still works.

The dashboard runs under daphne with its real policy header; spans of a run
(with a parent cycle) are sent to its receiver, then every page is opened and
the browser's console is watched for "Refused to ..." reports. The live
websocket must connect, the timeline must draw and the span tree must indent
(its geometry is set by trace.js from data attributes, not inline styles).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.conftest import free_port
from tests.e2e.conftest import LiveDashboard, log_in, running_dashboard, watch_problems
from tests.tracing.spans import agent_run, protobuf_body, record


def _send_spans(live: LiveDashboard) -> None:
    spans = record(lambda t: agent_run(t, "wf-csp", "run-csp", failed_attempts=1))
    request = urllib.request.Request(
        f"{live.url}/v1/traces",
        data=protobuf_body(spans),
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _violations(page: Page) -> list[str]:
    found: list[str] = []
    page.on(
        "console",
        lambda message: (
            found.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None
        ),
    )
    return found


def test_no_page_breaks_the_content_security_policy(
    chromium: Browser, tmp_path: Path, results_dir: Path
) -> None:
    # A dashboard of its own: the shared one's run counts are other tests' business.
    with running_dashboard(tmp_path, f"127.0.0.1:{free_port()}") as live:
        _check_every_page(chromium, live, results_dir)


def _check_every_page(chromium: Browser, live_dashboard: LiveDashboard, results_dir: Path) -> None:
    _send_spans(live_dashboard)
    page = chromium.new_page(viewport={"width": 1440, "height": 1000})
    violations = _violations(page)
    problems = watch_problems(page, http_errors=False)
    log_in(page, live_dashboard)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    # The runs list: live updates over the websocket, filters through htmx (runs.js).
    page.goto(f"{live_dashboard.url}/")
    expect(page.get_by_text("wf-csp")).to_be_visible()
    page.get_by_label("Search").fill("no-such-run")
    expect(page.get_by_text("wf-csp")).to_have_count(0)
    page.wait_for_function("() => location.search.includes('q=no-such-run')")
    page.get_by_role("link", name="Clear", exact=True).click()
    expect(page.get_by_text("wf-csp")).to_be_visible()
    expect(page.get_by_label("Search")).to_have_value("")
    assert any("/ws/runs/" in url for url in sockets), sockets

    # The run page: timeline drawn, tree indented, a span opened through htmx.
    page.goto(f"{live_dashboard.url}/runs/wf-csp/run-csp/")
    expect(page.locator("[data-timeline] svg rect").first).to_be_attached()
    rows = page.locator("#run-trace .span-row")
    expect(rows.first).to_be_visible()
    depths = rows.evaluate_all("rows => rows.map(r => parseFloat(getComputedStyle(r).paddingLeft))")
    assert max(depths) > min(depths), depths  # --depth applied from data-depth
    widths = page.locator("#run-trace .dbar i").evaluate_all("bars => bars.map(b => b.style.width)")
    assert all(w.endswith("%") for w in widths), widths
    rows.nth(1).click()
    expect(page.locator("#span-panel [data-span-detail]")).to_be_visible()
    page.screenshot(path=str(results_dir / "csp-run-page.png"), full_page=True)

    pages = ("/overview/", "/exports/", "/audit/", "/tokens/", "/runs/new/", "/admin/")
    # The run's conversation, its full history and a search's marks (trace.js).
    run_views = (
        "/runs/wf-csp/run-csp/conversation/",
        "/runs/wf-csp/run-csp/?history=full&q=csp",
    )
    for path in (*pages, *run_views):
        page.goto(f"{live_dashboard.url}{path}")
        page.wait_for_load_state("networkidle")
    page.goto(f"{live_dashboard.url}/tokens/")
    page.get_by_label("Name").fill("csp-check")
    page.get_by_role("button", name="Issue token").click()
    expect(page.locator(".token-value")).to_contain_text("lv_")
    page.screenshot(path=str(results_dir / "tokens.png"), full_page=True)

    assert violations == [], violations
    assert [p for p in problems if "Refused" in p or "Content Security" in p] == []
