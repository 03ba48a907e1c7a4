import re
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests.e2e.conftest import LiveDashboard, watch_problems


def test_login_through_the_form_lands_on_the_runs_list(
    live_dashboard: LiveDashboard, chromium: Browser, results_dir: Path
) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems = watch_problems(page)

    page.goto(f"{live_dashboard.url}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    expect(page.get_by_role("heading", name="Loomview")).to_be_visible()
    page.screenshot(path=str(results_dir / "login.png"))

    page.get_by_label("Username").fill(live_dashboard.username)
    page.get_by_label("Password").fill(live_dashboard.password)
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(f"{live_dashboard.url}/")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text(
        f"Temporal is unreachable at {live_dashboard.temporal_address}"
    )
    expect(page.locator("header")).to_contain_text("admin")
    # The vendored htmx loaded from our own static files, and so did the ws
    # extension: its init hook installs htmx.createWebSocket.
    assert page.evaluate("typeof htmx") == "object"
    assert page.evaluate("typeof htmx.createWebSocket") == "function"
    page.screenshot(path=str(results_dir / "runs.png"), full_page=True)

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{live_dashboard.url}/login/")

    assert problems == []
    context.close()
