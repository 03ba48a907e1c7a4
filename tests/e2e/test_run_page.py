"""The run page in Chromium against the real stack: Temporal dev server, daphne,
and the bundled worker exporting its spans to that daphne."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import TemporalServer, WorkerProcess, connect_client
from tests.e2e.conftest import LiveDashboard, log_in, running_dashboard, watch_problems
from tests.e2e.story_stack import module_worker, wait_until
from worker.inputs import AgentRunInput, ApprovalInput, ConversationInput, Decision

pytestmark = pytest.mark.timeout(240)
T = TypeVar("T")
DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]


def in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run Temporal client calls on their own loop: sync Playwright owns the main thread's."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@pytest.fixture(scope="module")
def stack(
    temporal_server: TemporalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveDashboard]:
    """daphne talking to the real Temporal dev server, with an empty span store."""
    with running_dashboard(tmp_path_factory.mktemp("e2e-run"), temporal_server.address) as live:
        yield live


@pytest.fixture(scope="module")
def traced_worker(
    temporal_server: TemporalServer, stack: LiveDashboard, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The bundled worker exporting its spans to the stack; the module's tests share it."""
    yield from module_worker(
        temporal_server, stack, tmp_path_factory.mktemp("worker"), LOOMVIEW_DEMO_LATENCY_MS="20"
    )


def hostile_span(workflow_id: str, run_id: str) -> dict[str, Any]:
    """An OTLP/JSON generation span whose model answer is markup."""
    now = time.time_ns()

    def attr(key: str, value: str) -> dict[str, Any]:
        return {"key": key, "value": {"stringValue": value}}

    answer = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [attr("service.name", "e2e")]},
                "scopeSpans": [
                    {
                        "scope": {"name": "e2e"},
                        "spans": [
                            {
                                "traceId": uuid.uuid4().hex,
                                "spanId": uuid.uuid4().hex[:16],
                                "name": "chat hostile-answer",
                                "kind": 1,
                                "startTimeUnixNano": str(now - 5_000_000),
                                "endTimeUnixNano": str(now),
                                "attributes": [
                                    attr("temporal.workflow.id", workflow_id),
                                    attr("temporal.run.id", run_id),
                                    attr("agents.span.type", "custom"),
                                    attr(
                                        "gen_ai.output.messages",
                                        json.dumps([{"role": "assistant", "content": answer}]),
                                    ),
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }


def post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_triage_run_with_a_failed_attempt(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    workflow_id = f"e2e-triage-{uuid.uuid4().hex[:6]}"

    async def run_triage() -> str:
        client = await connect_client(temporal_server.address)
        handle = await client.start_workflow(
            "triage",
            AgentRunInput("I was charged twice on invoice INV-2231", faults=["call=1:fail=1"]),
            id=workflow_id,
            task_queue=worker.task_queue,
        )
        await handle.result()
        return str(handle.result_run_id)

    run_id = in_thread(run_triage)
    post_json(f"{stack.url}/v1/traces", hostile_span(workflow_id, run_id))

    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = watch_problems(page, http_errors=False)
    log_in(page, stack)
    # The raw span view: the steps below pick spans by name.
    run_url = f"{stack.url}/runs/{workflow_id}/{run_id}/?trace=raw"
    # The exporter batches every 100 ms; wait until the model spans have all arrived.
    deadline = time.monotonic() + 20
    while True:
        page.goto(run_url)
        calls = int(page.locator('[data-total="model_calls"]').inner_text())
        arrived = calls >= 3 and page.locator(".failed-count").count() > 0
        if arrived or time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)

    expect(page.locator('#run-header [data-status="COMPLETED"]')).to_be_visible()
    expect(page.locator(".failed-count")).to_have_text("1 failed")
    bars = page.locator("svg.tl-svg rect.tl-attempt")
    expect(bars.first).to_be_visible()
    assert bars.count() >= calls
    failed = page.locator("svg.tl-svg rect.tl-attempt.failed")
    assert failed.count() >= 1
    assert "Injected model failure" in (failed.first.locator("title").text_content() or "")
    assert page.locator(".tok-svg g.tok").count() == calls
    page.screenshot(path=str(results_dir / "run-page.png"), full_page=True)

    # Zoom in and back out.
    page.get_by_role("button", name="Zoom in").click()
    page.get_by_role("button", name="Reset", exact=True).click()
    assert bars.count() >= calls

    # A span's detail opens in the side panel.
    generation = page.locator(".span-row:not(.is-error)", has_text="chat loomview-demo-1").first
    generation.click()
    panel = page.locator("#span-panel")
    expect(panel.locator("[data-span-detail]")).to_be_visible()
    expect(panel).to_contain_text("Input messages")
    expect(panel).to_contain_text("gen_ai.request.model")
    expect(page).to_have_url(run_url)  # no navigation: loaded by htmx
    page.screenshot(path=str(results_dir / "run-span-detail.png"), full_page=False)

    # The hostile answer is shown as text; none of it runs.
    page.locator(".span-row", has_text="chat hostile-answer").click()
    expect(panel).to_contain_text("<script>window.__pwned=1</script>")
    expect(panel).to_contain_text("<img src=x onerror=")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#span-panel script, #span-panel img").count() == 0

    # Full history, swapped in by htmx.
    page.get_by_role("link", name=re.compile(r"^Full \(")).click()
    expect(page.locator("#run-history")).to_contain_text("WorkflowTaskScheduled")
    page.locator("#run-history").screenshot(path=str(results_dir / "run-history.png"))

    assert problems == []
    context.close()


def test_running_run_updates_live(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    workflow_id = f"e2e-approval-{uuid.uuid4().hex[:6]}"

    async def start() -> str:
        client = await connect_client(temporal_server.address)
        handle = await client.start_workflow(
            "approval",
            ApprovalInput("Rotate the staging database credentials.", timeout_seconds=300),
            id=workflow_id,
            task_queue=worker.task_queue,
        )
        return str(handle.first_execution_run_id or handle.result_run_id)

    run_id = in_thread(start)
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = watch_problems(page, http_errors=False)
    log_in(page, stack)
    page.goto(f"{stack.url}/runs/{workflow_id}/{run_id}/?trace=raw")
    expect(page.locator('#run-header [data-status="RUNNING"]')).to_be_visible()
    # The drafting model call shows up without a reload.
    expect(page.locator("svg.tl-svg rect.tl-attempt").first).to_be_visible(timeout=20_000)
    page.evaluate("window.__sameDocument = true")
    page.screenshot(path=str(results_dir / "run-live-waiting.png"), full_page=True)

    # Select a span, and fold a node that does not hold it.
    page.locator("#run-trace .span-row", has_text="chat loomview-demo-1").first.click()
    expect(page.locator("#span-panel [data-span-detail]")).to_be_visible()
    selected = page.locator("#span-panel [data-span-detail]").get_attribute("data-span-detail")
    expect(page.locator(f'#run-trace .span-row.selected[data-span="{selected}"]')).to_have_count(1)
    folded = page.evaluate(
        """() => {
        const chosen = document.querySelector("#run-trace .span-row.selected");
        const node = [...document.querySelectorAll("#run-trace details.node")]
          .find((n) => !n.contains(chosen));
        return node.querySelector(":scope > summary > .span-row").dataset.span;
    }"""
    )
    node = page.locator(f'#run-trace details.node:has(> summary > [data-span="{folded}"])')
    node.locator(":scope > summary > .tw").click()
    is_open = (
        "(id) => document.querySelector(`#run-trace [data-span='${id}']`).closest('details').open"
    )
    assert page.evaluate(is_open, folded) is False
    expect(page.locator("#span-panel [data-span-detail]")).to_have_attribute(
        "data-span-detail", selected or ""
    )

    async def approve() -> None:
        client = await connect_client(temporal_server.address)
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        await handle.signal("approve", Decision(comment="ok from e2e", by="e2e"))
        await handle.result()

    in_thread(approve)
    expect(page.locator('#run-header [data-status="COMPLETED"]')).to_be_visible(timeout=20_000)
    expect(page.locator("svg.tl-svg .tl-signal")).to_have_count(1, timeout=10_000)
    expect(page.locator('[data-total="model_calls"]')).not_to_have_text("1", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    # The live re-renders swapped the tree in; the fold and the selection survived.
    assert page.evaluate(is_open, folded) is False
    expect(page.locator(f'#run-trace .span-row.selected[data-span="{selected}"]')).to_have_count(1)
    page.screenshot(path=str(results_dir / "run-live-completed.png"), full_page=True)
    assert problems == []
    context.close()


def test_conversation_transcript_follows_the_chain_that_continued_as_new(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    workflow_id = f"e2e-chat-{uuid.uuid4().hex[:6]}"
    said = [
        "Plan three days in Porto for me.",
        "What should I pack?",
        "Where should we eat on the river?",
        "Thanks, and <b>one</b> last thing: trains?",
    ]

    async def converse() -> tuple[str, str, str]:
        client = await connect_client(temporal_server.address)
        handle = await client.start_workflow(
            "conversation",
            ConversationInput(prompt=said[0], max_turns_per_run=2),
            id=workflow_id,
            task_queue=worker.task_queue,
        )
        first = str(handle.first_execution_run_id or handle.result_run_id)
        latest = client.get_workflow_handle(workflow_id)
        await latest.execute_update("send_message", said[1])
        # Two turns answered: the run continues as new; the chat goes on in the next run.
        deadline = time.monotonic() + 30
        while (await latest.describe()).run_id == first:
            assert time.monotonic() < deadline, "the conversation did not continue as new"
            await asyncio.sleep(0.2)
        await latest.execute_update("send_message", said[2])
        await latest.signal("user_message", said[3])
        # Two more turns: a third run waits for the next message.
        while True:
            assert time.monotonic() < deadline + 30, "the second run did not continue as new"
            current = str((await latest.describe()).run_id)
            if current != first:
                run = client.get_workflow_handle(workflow_id, run_id=current)
                first_event = (await run.fetch_history()).events[0]
                started = first_event.workflow_execution_started_event_attributes
                if started.continued_execution_run_id not in ("", first):
                    return first, started.continued_execution_run_id, current
            await asyncio.sleep(0.2)

    first, second, third = in_thread(converse)
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, stack)
    # The open run has answered nothing yet; its signal picker offers the harmless
    # signal first, never `end`.
    page.goto(f"{stack.url}/runs/{workflow_id}/{third}/")
    expect(page.locator('#run-actions select[name="name"]').first).to_have_value("user_message")
    expect(page.locator("#run-waiting [data-wait=message]")).to_be_visible()
    page.goto(f"{stack.url}/runs/{workflow_id}/{second}/")
    section = page.locator("#run-conversation")
    # This run's own turns, as their spans arrive (the live page swaps them in).
    expect(section.locator("[data-turn]")).to_have_count(2, timeout=30_000)
    expect(section.locator("[data-user]")).to_have_text(said[2:])
    sources = ["update send_message", "signal user_message"]
    expect(section.locator(".turn-src")).to_have_text(sources)
    section.screenshot(path=str(results_dir / "run-conversation-section.png"))
    section.get_by_role("link", name="Whole conversation across 3 runs →").click()
    expect(page.get_by_role("heading", name="Conversation")).to_be_visible()
    turns = page.locator("[data-transcript] [data-turn]")
    # Every turn of the chain, in order, each with its answer, tokens and a link to its calls.
    expect(turns).to_have_count(4, timeout=20_000)
    expect(page.locator("[data-transcript] [data-user]")).to_have_text(said)
    expect(page.locator("[data-run-boundary]")).to_have_count(1)
    for index in range(4):
        turn = turns.nth(index)
        expect(turn.locator("[data-answer]")).not_to_have_text("(no answer in words)")
        expect(turn).to_contain_text("tokens")
        expect(turn.get_by_role("link", name=re.compile(r"^call \d+$")).first).to_be_visible()
    assert page.evaluate("document.querySelector('[data-transcript] b')") is None  # escaped
    page.screenshot(path=str(results_dir / "run-conversation.png"), full_page=True)
    # The first run's and the open run's pages read the same whole conversation.
    for run_id in (first, third):
        page.goto(f"{stack.url}/runs/{workflow_id}/{run_id}/conversation/")
        expect(page.locator("[data-transcript] [data-user]")).to_have_text(said)
    assert problems == []
    context.close()


def test_searching_a_word_from_a_prompt_finds_the_run_and_marks_its_spans(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    tag = uuid.uuid4().hex[:6]
    prompts = {
        f"e2e-search-{tag}": "My kumquat delivery was charged twice, please refund it.",
        f"e2e-other-{tag}": "The sync of my calendar fails every morning.",
    }

    async def start_both() -> dict[str, str]:
        client = await connect_client(temporal_server.address)
        started = {}
        for workflow_id, prompt in prompts.items():
            handle = await client.start_workflow(
                "triage", AgentRunInput(prompt), id=workflow_id, task_queue=worker.task_queue
            )
            await handle.result()
            started[workflow_id] = str(handle.first_execution_run_id or handle.result_run_id)
        return started

    runs = in_thread(start_both)
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, stack)
    rows = page.locator("#runs-rows tr.run-row")
    expect(rows.filter(has_text=f"e2e-other-{tag}")).to_have_count(1)
    # A word of the prompt, not of the workflow id or an error, finds the run.
    deadline = time.monotonic() + 20
    while True:
        page.get_by_role("searchbox", name="Search").fill("")
        page.get_by_role("searchbox", name="Search").fill("Kumquat")
        try:
            expect(rows.filter(has_text=f"e2e-search-{tag}")).to_have_count(1, timeout=3000)
            break
        except AssertionError:
            # Its spans may still be on their way to the store.
            assert time.monotonic() < deadline, "the search never found the run"
    expect(rows.filter(has_text=f"e2e-other-{tag}")).to_have_count(0)
    # The row says where: the words around the match, the match marked.
    snippet = rows.filter(has_text=f"e2e-search-{tag}").locator("[data-match]")
    expect(snippet.locator("mark")).to_have_text(re.compile("^kumquat$", re.IGNORECASE))
    # Close enough to the start of the narrow cell to be seen, not cut by its ellipsis.
    assert snippet.locator("mark").evaluate(
        "m => m.getBoundingClientRect().right <= m.parentElement.getBoundingClientRect().right"
    )
    expect(snippet).to_contain_text("delivery was charged twice")
    page.screenshot(path=str(results_dir / "runs-search.png"), full_page=True)
    rows.filter(has_text=f"e2e-search-{tag}").get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(rf"/runs/e2e-search-{tag}/{runs[f'e2e-search-{tag}']}/"))
    note = page.locator("#run-trace [data-search-matches]")
    expect(note).to_contain_text("kumquat", ignore_case=True)
    expect(page.locator("#run-trace .span-row.is-match").first).to_be_visible()
    # The marked model call's detail shows the word highlighted where it was said.
    page.locator("#run-trace a.span-row.is-match.call-row").first.click()
    expect(page.locator("#span-panel mark.search-hit").first).to_have_text(
        re.compile("kumquat", re.IGNORECASE)
    )
    page.screenshot(path=str(results_dir / "run-search-marked.png"), full_page=True)
    assert problems == []
    context.close()


def test_search_marks_survive_live_updates_on_the_runs_list_and_the_run_page(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    """A run that matched a search goes on changing while the list and its page are open:
    the re-rendered row keeps its snippet and its link with the search, the re-rendered
    page keeps its note and its marked rows."""
    tag = uuid.uuid4().hex[:6]
    workflow_id = f"e2e-chat-search-{tag}"
    word = f"persimmon{tag}"

    async def start() -> str:
        client = await connect_client(temporal_server.address)
        handle = await client.start_workflow(
            "conversation",
            ConversationInput(prompt=f"Where can I buy a {word} tree near Porto?"),
            id=workflow_id,
            task_queue=traced_worker.task_queue,
        )
        await handle.execute_update("send_message", "And in Lisbon?", result_type=str)
        return str(handle.result_run_id)

    async def say(text: str) -> None:
        client = await connect_client(temporal_server.address)
        await client.get_workflow_handle(workflow_id).execute_update(
            "send_message", text, result_type=str
        )

    run_id = in_thread(start)
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, stack)
    row = page.locator("#runs-rows tr.run-row", has_text=workflow_id)
    deadline = time.monotonic() + 20
    while True:
        page.goto(f"{stack.url}/?q={word}")
        try:
            expect(row.locator("[data-match] mark")).to_have_count(1, timeout=3000)
            break
        except AssertionError:
            # The spans may still be on their way to the store.
            assert time.monotonic() < deadline, "the search never found the run"
    calls = row.locator("td.num").nth(1)  # model calls
    before = int(calls.inner_text())
    # The run answers another message: its row is re-rendered live, still marked.
    in_thread(lambda: say("Thank you!"))
    expect(calls).not_to_have_text(str(before), timeout=20_000)
    expect(row.locator("[data-match] mark")).to_have_text(re.compile(word, re.IGNORECASE))
    link = row.locator("a.trunc")
    expect(link).to_have_attribute("href", re.compile(rf"\?q={word}$"))
    page.screenshot(path=str(results_dir / "runs-search-live.png"), full_page=True)

    link.click()
    expect(page).to_have_url(re.compile(rf"/runs/{workflow_id}/{run_id}/\?q={word}"))
    note = page.locator("#run-trace [data-search-matches]")
    marked = page.locator("#run-trace .span-row.is-match.call-row")
    turns = page.locator("#run-conversation [data-turn]")
    call_rows = page.locator("#run-trace .span-row.call-row")
    expect(turns).to_have_count(3, timeout=20_000)
    expect(note).to_contain_text(word)
    # Every call was asked with the first message in its input: every call row is marked.
    shown = call_rows.count()
    assert shown >= 3
    expect(marked).to_have_count(shown)
    # Another turn while the page is open: the live re-render keeps the search.
    in_thread(lambda: say("Is it in season now?"))
    expect(turns).to_have_count(4, timeout=20_000)
    wait_until(lambda: call_rows.count() > shown, 20, "the new turn's model call")
    expect(marked).to_have_count(call_rows.count())
    expect(note).to_contain_text(word)
    marked.last.click()
    expect(page.locator("#span-panel mark.search-hit").first).to_have_text(
        re.compile(word, re.IGNORECASE)
    )
    page.screenshot(path=str(results_dir / "run-search-live.png"), full_page=True)

    async def end() -> None:
        client = await connect_client(temporal_server.address)
        await client.get_workflow_handle(workflow_id).signal("end")

    in_thread(end)
    assert problems == []
    context.close()
