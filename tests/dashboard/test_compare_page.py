"""The compare page from stored spans and recorded histories: what it marks, how it
escapes, how it names runs. The runs are copies of a real recorded triage run
(tests/dashboard/fixtures/triage_retries.json), edited where a test says so."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.core.cache import cache
from django.test import Client

from dashboard import compare, diffs, temporal
from tests.dashboard.run_fixtures import history_proto, recorded
from tracing.models import Span

pytestmark = pytest.mark.django_db

Edit = Callable[[dict[str, Any]], None]
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="alert(1)"> Done.'


def store_copy(workflow_id: str, run_id: str, edit: Edit | None = None) -> dict[str, Any]:
    """The recorded run stored again under other ids (and a trace of its own)."""
    data = recorded()
    trace = uuid.uuid4().hex
    spans = []
    for row in copy.deepcopy(data["spans"]):
        row.update(workflow_id=workflow_id, run_id=run_id, trace_id=trace)
        if edit is not None:
            edit(row)
        spans.append(Span(**row))
    Span.objects.bulk_create(spans)
    return data


def final_answer(text: str) -> Edit:
    """Replace what the model said in the run's last call (activity 5)."""

    def edit(row: dict[str, Any]) -> None:
        if row["kind"] == "generation" and row["activity_id"] == "5":
            attrs = row["data"]["attributes"]
            messages = [{"role": "assistant", "content": text}]
            attrs["gen_ai.output.messages"] = json.dumps(messages)

    return edit


@pytest.fixture
def no_temporal(closed_temporal_address: str) -> str:
    cache.clear()
    return closed_temporal_address


def get(client: Client, a: tuple[str, str], b: tuple[str, str], **extra: str) -> Any:
    query = urlencode({"a": "/".join(a), "b": "/".join(b), **extra})
    return client.get(f"/compare/?{query}")


def test_exactly_the_changed_answer_is_marked_and_escaped(
    logged_in_client: Client, no_temporal: str
) -> None:
    a = ("cmp-a", "run-a")
    b = ("cmp-b", "run-b")
    store_copy(*a)
    store_copy(*b, edit=final_answer(HOSTILE))
    response = get(logged_in_client, a, b)
    assert response.status_code == 200
    page = response.content.decode()
    pairs = [c for c in response.context["calls"] if not isinstance(c, compare.Fold)]
    changed = [c for c in pairs if c.status != "same"]
    assert [(c.a.call.activity_id, c.status, c.reasons) for c in changed if c.a] == [
        ("5", "changed", ["output"])
    ]
    assert response.context["call_counts"] == {"same": 3, "changed": 1}
    (output,) = changed[0].outputs or []
    assert output.status == "changed"
    # Model output is untrusted: escaped in the diff, never markup.
    assert "<script>window.__pwned" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    # Both are built from spans alone, under a banner, without histories.
    assert page.count("Temporal is unreachable") == 2
    assert "Neither run has an event history" in page


def test_the_same_run_twice_differs_in_nothing(logged_in_client: Client, no_temporal: str) -> None:
    a = ("cmp-same", "run-1")
    b = ("cmp-same", "run-2")
    store_copy(*a)
    store_copy(*b)
    response = get(logged_in_client, a, b)
    assert response.context["call_counts"] == {"same": 4}
    totals = response.context["totals"]
    assert {row.trend for row in totals if row.label != "Duration"} == {"same"}
    assert 'data-call-status="changed"' not in response.content.decode()


def test_runs_are_named_by_query_with_any_workflow_id(
    logged_in_client: Client, no_temporal: str
) -> None:
    # A workflow id may hold / ? & # and spaces: the query names it whole.
    odd = ("team/billing?x=1&y=2#3 with space", "run-odd")
    plain = ("cmp-plain", "run-plain")
    store_copy(*odd)
    store_copy(*plain)
    url = compare.compare_url(odd, plain)
    assert "team%2Fbilling%3Fx%3D1%26y%3D2%233+with+space%2Frun-odd" in url
    response = logged_in_client.get(url)
    assert response.status_code == 200
    assert response.context["a"].workflow_id == odd[0]
    assert response.context["a"].run_id == odd[1]
    # The run page's route cannot carry a slash: no link, the id is shown as text.
    assert response.context["a"].url == ""
    assert response.context["b"].url == "/runs/cmp-plain/run-plain/"
    # Swapping keeps both ids whole.
    swapped = parse_qs(urlsplit(response.context["swap_url"]).query)
    assert (swapped["a"], swapped["b"]) == (["/".join(plain)], ["/".join(odd)])


def test_two_picks_from_the_runs_list_redirect_with_the_older_run_as_a(
    logged_in_client: Client, no_temporal: str
) -> None:
    newer, older = "wf-new/run-2", "wf-old/run-1"
    response = logged_in_client.get("/compare/?" + urlencode([("run", newer), ("run", older)]))
    assert response.status_code == 302
    assert response["Location"] == compare.compare_url(("wf-old", "run-1"), ("wf-new", "run-2"))
    one = logged_in_client.get("/compare/?run=wf/run")
    assert one.status_code == 400 and "exactly two" in one.content.decode()


def test_bad_and_unknown_runs_are_form_errors(logged_in_client: Client, no_temporal: str) -> None:
    form = logged_in_client.get("/compare/")
    assert form.status_code == 200 and 'name="a"' in form.content.decode()
    bad = get(logged_in_client, ("", "x"), ("cmp", "y"))
    assert bad.status_code == 400
    missing = get(logged_in_client, ("nobody", "run-0"), ("nobody", "run-1"))
    assert missing.status_code == 404
    body = missing.content.decode()
    assert "Run A is unknown" in body and "Run B is unknown" in body
    # A run page link pasted in works as a reference.
    store_copy("cmp-link", "run-link")
    store_copy("cmp-link", "run-link-2")
    pasted = logged_in_client.get(
        "/compare/?"
        + urlencode(
            {
                "a": "http://testserver/runs/cmp-link/run-link/",
                "b": "cmp-link/run-link-2",
            }
        )
    )
    assert pasted.status_code == 200


def test_compare_with_the_previous_run_of_its_type(
    logged_in_client: Client, no_temporal: str
) -> None:
    from tracing.models import RunSummary

    # Temporal is down: the span store's run summaries say which triage run came before.
    for workflow_id, run_id, start in (
        ("prev-0", "run-0", 1_000),
        ("prev-1", "run-1", 2_000),
        ("prev-2", "run-2", 3_000),
        ("other-type", "run-x", 2_500),
    ):
        store_copy(workflow_id, run_id)
        RunSummary.objects.create(
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_type="triage" if workflow_id.startswith("prev") else "approval",
            first_span_ns=start,
        )
    response = logged_in_client.get("/compare/previous/?run=prev-2/run-2")
    assert response.status_code == 302
    assert response["Location"] == compare.compare_url(("prev-1", "run-1"), ("prev-2", "run-2"))
    first = logged_in_client.get("/compare/previous/?run=prev-0/run-0")
    assert first.status_code == 404 and "No earlier triage run" in first.content.decode()


def test_a_run_against_its_recorded_history(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With histories, the events are aligned too: a run against itself differs in nothing."""
    cache.clear()
    data = recorded()
    Span.objects.bulk_create(Span(**copy.deepcopy(row)) for row in data["spans"])

    async def fake(workflow_id: str, run_id: str) -> temporal.RunHistory:
        return temporal.RunHistory(workflow_id, run_id, history_proto(data))

    monkeypatch.setattr(temporal, "fetch_history", fake)
    ref = (data["workflow_id"], data["run_id"])
    response = get(logged_in_client, ref, ref, events="all")
    rows = response.context["events"]
    assert rows and {r.status for r in rows} == {"same"}
    # Workflow-task bookkeeping is left out; the activities are there, attempts and all.
    labels = [r.a.label for r in rows]
    assert not any(label.startswith("WorkflowTask") for label in labels)
    assert labels.count("ActivityTaskScheduled invoke_model_activity") == 4
    started = [r.a.detail for r in rows if r.a.label == "ActivityTaskStarted invoke_model_activity"]
    assert started[0].startswith("attempt 3; previous attempt: ")


# -- the diff itself --------------------------------------------------------------------


def test_messages_in_every_shape_become_text_without_ids() -> None:
    chat = diffs.messages(
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]
    )
    assert chat is not None
    assert [(m.role, m.text) for m in chat] == [
        ("system", "Be brief."),
        ("assistant", '→ f({"a": 1})'),
        ("tool", "42"),
    ]
    responses = diffs.messages(
        [
            {"type": "function_call", "call_id": "c9", "name": "f", "arguments": '{"a":1}'},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi"}],
            },
        ]
    )
    assert responses is not None
    assert [m.text for m in responses] == ['→ f({"a": 1})', "Hi"]
    semconv = diffs.messages(
        [
            {
                "role": "assistant",
                "parts": [{"type": "tool_call", "id": "x", "name": "g", "arguments": {"q": "z"}}],
            }
        ]
    )
    assert semconv is not None and semconv[0].tool_calls == [diffs.ToolCall("g", '{"q": "z"}')]
    assert diffs.messages("[]") is None and diffs.messages(None) is None
    assert [m.text for m in diffs.messages("plain text") or []] == ["plain text"]
    # The same words with other call ids compare equal.
    other = diffs.messages(
        [{"type": "function_call", "call_id": "c10", "name": "f", "arguments": '{"a": 1}'}]
    )
    assert other is not None and other[0].key == responses[0].key


def test_alignment_pairs_replacements_and_keeps_the_rest_apart() -> None:
    rows = diffs.align(list("abcxd"), list("abyzd"), key=lambda x: x)
    assert rows == [
        ("a", "a", "same"),
        ("b", "b", "same"),
        ("c", "y", "changed"),
        ("x", "z", "changed"),
        ("d", "d", "same"),
    ]
    apart = diffs.align(list("ab"), list("bc"), key=lambda x: x, pair_replaced=False)
    assert apart == [("a", None, "only_a"), ("b", "b", "same"), (None, "c", "only_b")]


def test_side_by_side_escapes_and_marks_only_what_changed() -> None:
    html = diffs.side_by_side("same line\nold <b>word</b> here", "same line\nnew <b>word</b> here")
    assert "<b>" not in html
    assert '<div class="d-cell d-eq">same line</div>' in html
    assert "<del>old </del>" in html and "<ins>new </ins>" in html
    assert "&lt;b&gt;word&lt;/b&gt;" in html
    # Repetitive text stays fast and whole lines still diff.
    many = diffs.side_by_side("ok " * 5000, "fine " * 5000)
    assert "<del>" in many and "<ins>" in many


def test_runs_of_different_types_align_only_what_can_be_aligned(
    logged_in_client: Client, no_temporal: str
) -> None:
    def other_type(row: dict[str, Any]) -> None:
        row["data"]["attributes"]["temporal.workflow.type"] = "triage_v2"
        if row["agent"] == "Technical support":
            row["agent"] = "Support engineer"

    a = ("cmp-type-a", "run-a")
    b = ("cmp-type-b", "run-b")
    store_copy(*a)
    store_copy(*b, edit=other_type)
    response = get(logged_in_client, a, b)
    assert response.status_code == 200
    ctx = response.context
    assert (ctx["a"].header.workflow_type, ctx["b"].header.workflow_type) == ("triage", "triage_v2")
    assert ctx["same_type"] is False and "different workflow types" in response.content.decode()
    # The triage agent's call pairs; the other agents' calls are not forced into pairs.
    rows = [(c.status, c.a and c.a.agent, c.b and c.b.agent) for c in ctx["calls"]]
    assert rows == [
        ("same", "Triage agent", "Triage agent"),
        *[("only_a", "Technical support", None)] * 3,
        *[("only_b", None, "Support engineer")] * 3,
    ]
