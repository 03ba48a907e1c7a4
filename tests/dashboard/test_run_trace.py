"""The run page's trace: the agent view, the raw view, a bounded number of rows at
a time with the rest loaded on demand, and a model call's merged detail."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from dashboard import run_page, temporal
from tests.dashboard.run_fixtures import history_proto, recorded, store_spans
from tracing.models import Span

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The recorded triage run (call 1 failed twice), with Temporal answering its history."""
    cache.clear()
    data = recorded()

    async def fake(workflow_id: str, run_id: str) -> temporal.RunHistory:
        if (workflow_id, run_id) != (data["workflow_id"], data["run_id"]):
            raise temporal.RunNotFound(run_id)
        return temporal.RunHistory(workflow_id, run_id, history_proto(data))

    monkeypatch.setattr(temporal, "fetch_history", fake)
    return data


def url(run: dict[str, Any], suffix: str = "") -> str:
    return f"/runs/{run['workflow_id']}/{run['run_id']}/{suffix}"


def trace_section(body: str) -> str:
    start = body.index('<section id="run-trace"')
    return body[start : body.index("</section>", start)]


def rows_of(section: str, cls: str = "span-row") -> list[str]:
    """The visible names of the rows with this class, in order."""
    rows = re.findall(
        r'class="(span-row[^"]*)"[^>]*>.*?<span class="span-name">(.*?)</span>', section
    )
    return [html.unescape(name) for classes, name in rows if cls in classes.split()]


def test_agent_view_is_the_default_with_one_row_per_model_call(
    logged_in_client: Client, run: dict[str, Any]
) -> None:
    store_spans(run)
    section = trace_section(logged_in_client.get(url(run)).content.decode())
    assert 'data-trace-view="agent"' in section
    calls = rows_of(section, "call-row")
    assert calls == [
        "Triage agent · loomview-demo-1 · call 1 · attempt 3/3",
        "Technical support · loomview-demo-1 · call 2 · attempt 1/1",
        "Technical support · loomview-demo-1 · call 3 · attempt 1/1",
        "Technical support · loomview-demo-1 · call 4 · attempt 1/1",
    ]
    # The retried call's attempts sit under it, failures with their error.
    attempts = rows_of(section, "attempt-row")
    assert [a.split(" · ")[0] for a in attempts] == ["attempt 1/3", "attempt 2/3", "attempt 3/3"]
    assert "503 Service Unavailable" in attempts[0]
    # Tools, the handoff and the guardrail under their agent; wrappers folded away.
    names = rows_of(section)
    for name in (
        "check_service_status",
        "search_knowledge_base",
        "Triage agent → Technical support",
    ):
        assert name in names
    for wrapper in ("temporal:startActivity", "temporal:executeActivity", "turn", "task"):
        assert wrapper not in names
    assert "chat loomview-demo-1" not in names
    assert section.count("<details") == section.count("</details>")
    # Tokens and cost per call, failed attempts included.
    assert "61→52 · $0.00017" in section


def test_the_raw_view_is_remembered(logged_in_client: Client, run: dict[str, Any]) -> None:
    store_spans(run)
    response = logged_in_client.get(url(run) + "?trace=raw")
    assert response.cookies["loomview_trace"].value == "raw"
    section = trace_section(response.content.decode())
    assert 'data-trace-view="raw"' in section
    assert len(re.findall(r'class="span-row', section)) == len(run["spans"])
    assert "temporal:executeActivity" in rows_of(section)
    again = trace_section(logged_in_client.get(url(run)).content.decode())
    assert 'data-trace-view="raw"' in again
    logged_in_client.get(url(run) + "?trace=agent")
    assert 'data-trace-view="agent"' in logged_in_client.get(url(run)).content.decode()


def test_call_detail_merges_attempts_errors_tokens_and_cost(
    logged_in_client: Client, run: dict[str, Any]
) -> None:
    spans = store_spans(run)
    # The first failed attempt reported tokens: it costs them.
    failed = next(s for s in spans if s.kind == "generation" and s.attempt == 1)
    failed.tokens_in, failed.tokens_out = 1000, 0
    failed.save()
    body = logged_in_client.get(url(run, "calls/1/"), headers={"HX-Request": "true"})
    text = body.content.decode()
    assert text.lstrip().startswith("<article")
    assert "Triage agent · loomview-demo-1 · call 1 · 3 attempts" in text
    assert text.count("data-attempt-error=") == 2
    assert "503 Service Unavailable" in text
    assert 'data-attempt-cost="1">$0.001000<' in text  # 1,000 tokens at $1 per million
    assert 'data-attempt-cost="2">—<' in text
    assert "$0.001165" in text  # the call: 1,061 in and 52 out
    # An attempt's own generation, with what the model was asked.
    chosen = logged_in_client.get(url(run, "calls/1/?attempt=3")).content.decode()
    assert "<html" in chosen and "Input messages" in chosen
    assert logged_in_client.get(url(run, "calls/99/")).status_code == 404
    api = logged_in_client.get(f"/api{url(run)}").json()
    first = api["model_calls"][0]
    assert first["label"] == "Triage agent · loomview-demo-1 · call 1 · 3 attempts"
    assert [a["cost_usd"] for a in first["attempts"]] == ["0.001000", None, "0.000165"]
    assert first["cost_usd"] == "0.001165"


def make_big_run(children: int, grandchildren: int) -> tuple[str, str]:
    """A run of one root span with many children, the first of which has children too."""
    wf, run_id = "big-run", "big-run-id"
    base = 1_700_000_000_000_000_000
    rows = [
        Span(trace_id="e" * 32, span_id="root", parent_span_id="", name="RunWorkflow:batch",
             kind="temporal", workflow_id=wf, run_id=run_id, start_ns=base,
             end_ns=base + 10**9, duration_ns=10**9, data={})
    ]  # fmt: skip
    for i in range(children):
        rows.append(
            Span(trace_id="e" * 32, span_id=f"c{i:07d}", parent_span_id="root",
                 name=f"step <{i}>", kind="custom", workflow_id=wf, run_id=run_id,
                 start_ns=base + i, end_ns=base + i + 10, duration_ns=10, data={})
        )  # fmt: skip
    for j in range(grandchildren):
        rows.append(
            Span(trace_id="e" * 32, span_id=f"g{j:07d}", parent_span_id="c0000000",
                 name=f"item {j}", kind="custom", workflow_id=wf, run_id=run_id,
                 start_ns=base + j, end_ns=base + j + 5, duration_ns=5, data={})
        )  # fmt: skip
    Span.objects.bulk_create(rows, batch_size=1000)
    return wf, run_id


def test_a_huge_run_renders_a_bounded_number_of_rows_and_loads_the_rest_on_demand(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    cache.clear()
    wf, run_id = make_big_run(children=3000, grandchildren=450)
    body = logged_in_client.get(f"/runs/{wf}/{run_id}/?trace=raw").content.decode()
    section = trace_section(body)
    shown = len(re.findall(r'class="span-row', section))
    assert shown <= run_page.TREE_BUDGET
    assert "3451 spans" in section
    # The root's children come a page at a time.
    more = re.findall(r'class="more-row" href="([^"]+)"', section)
    assert len(more) == 1 and "Show 200 more of 2,800" in section
    page = logged_in_client.get(html.unescape(more[0]), headers={"HX-Request": "true"})
    assert page.status_code == 200
    rows = page.content.decode()
    assert rows_of(rows)[0] == "step <200>"
    assert len(re.findall(r'class="span-row', rows)) <= run_page.TREE_BUDGET
    assert "Show 200 more of 2,600" in rows
    # The first child's 450 children did not fit: it loads them when opened.
    lazy = re.findall(r'class="node lazy[^"]*" hx-get="([^"]+)"', section)
    assert len(lazy) == 1
    opened = logged_in_client.get(html.unescape(lazy[0]), headers={"HX-Request": "true"})
    assert rows_of(opened.content.decode())[:2] == ["item 0", "item 1"]
    assert "Show 200 more of 250" in opened.content.decode()
    # Escaped like everything else; nothing else answers.
    assert "step &lt;7&gt;" in section
    trace = f"/runs/{wf}/{run_id}/trace/"
    assert logged_in_client.get(trace + "?view=nope").status_code == 400
    assert logged_in_client.get(trace + "?view=raw&node=999999999").status_code == 404


def test_an_open_run_shows_one_tree_and_parent_cycles_still_show(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    cache.clear()
    base = 1_700_000_000_000_000_000

    def stored(span_id: str, parent: str, name: str) -> Span:
        return Span(
            trace_id="f" * 32, span_id=span_id, parent_span_id=parent, name=name,
            kind="custom", workflow_id="open", run_id="r1", start_ns=base,
            end_ns=base + 1000, duration_ns=1000, data={},
        )  # fmt: skip

    Span.objects.bulk_create(
        [
            # The workflow span is not stored yet: its children are separate roots.
            stored("a", "workflow", "StartActivity:invoke_model_activity"),
            stored("b", "workflow", "task"),
            # Two spans that are each other's parent, and one its own.
            stored("x", "y", "cycle x"),
            stored("y", "x", "cycle y"),
            stored("s", "s", "self parent"),
        ]
    )
    section = trace_section(logged_in_client.get("/runs/open/r1/?trace=raw").content.decode())
    names = rows_of(section)
    assert names[0] == "workflow run"
    assert set(names[1:]) == {
        "StartActivity:invoke_model_activity", "task", "cycle x", "cycle y", "self parent",
    }  # fmt: skip
    assert section.count('class="node') - section.count('class="node leaf') == 2


def test_rows_loaded_later_keep_a_searchs_marks(
    logged_in_client: Client, run: dict[str, Any], closed_temporal_address: str
) -> None:
    # "Show more" and a lazily opened node: their URLs carry the search; their rows are marked.
    wf, run_id = make_big_run(children=600, grandchildren=0)
    Span.objects.filter(span_id="c0000450").update(name="step <450> wombat")
    body = logged_in_client.get(f"/runs/{wf}/{run_id}/?trace=raw&q=wombat").content.decode()
    section = trace_section(body)
    assert 'data-search-matches="1"' in section
    (more,) = re.findall(r'class="more-row" href="([^"]+)"', section)
    assert "q=wombat" in html.unescape(more)
    page = logged_in_client.get(html.unescape(more), headers={"HX-Request": "true"}).content
    (more,) = re.findall(r'class="more-row" href="([^"]+)"', page.decode())
    rows = logged_in_client.get(html.unescape(more), headers={"HX-Request": "true"})
    assert rows_of(rows.content.decode(), "is-match") == ["step <450> wombat"]
    # Without the search nothing is marked, and the URLs carry none.
    plain = trace_section(logged_in_client.get(f"/runs/{wf}/{run_id}/?trace=raw").content.decode())
    assert "q=" not in plain and "is-match" not in plain
    # In the agent view a model call's row is marked when any of its spans matched.
    store_spans(run)
    trace = url(run, "trace/")
    agent = logged_in_client.get(
        f"{trace}?view=agent&node=run&offset=0&depth=0&q=dashboard", headers={"HX-Request": "true"}
    ).content.decode()
    calls = rows_of(agent, "call-row")
    assert calls and set(calls) <= set(rows_of(agent, "is-match"))  # each was asked it
    unmarked = logged_in_client.get(
        f"{trace}?view=agent&node=run&offset=0&depth=0", headers={"HX-Request": "true"}
    ).content.decode()
    assert not rows_of(unmarked, "is-match")
