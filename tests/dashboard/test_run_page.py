import json
import re
from datetime import datetime
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from dashboard import temporal
from dashboard.models import ApiToken
from tests.dashboard.run_fixtures import history_proto, recorded, store_spans
from tracing.models import Span

pytestmark = pytest.mark.django_db


@pytest.fixture
def run() -> dict[str, Any]:
    cache.clear()
    return recorded()


@pytest.fixture
def history_calls(monkeypatch: pytest.MonkeyPatch, run: dict[str, Any]) -> list[str]:
    """Temporal answers with the recorded history; returns the run ids it was asked for."""
    calls: list[str] = []

    async def fake(workflow_id: str, run_id: str) -> temporal.RunHistory:
        calls.append(run_id)
        if (workflow_id, run_id) != (run["workflow_id"], run["run_id"]):
            raise temporal.RunNotFound(run_id)
        return temporal.RunHistory(workflow_id, run_id, history_proto(run))

    monkeypatch.setattr(temporal, "fetch_history", fake)
    return calls


def url(run: dict[str, Any], suffix: str = "") -> str:
    return f"/runs/{run['workflow_id']}/{run['run_id']}/{suffix}"


def test_header_shows_status_totals_input_result_and_temporal_link(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    store_spans(run)
    response = logged_in_client.get(url(run))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-status="COMPLETED"' in body
    assert "triage" in body and "cap-queue" in body
    assert 'data-total="model_calls">4<' in body
    assert "2 failed" in body
    assert "1296 / 348" in body
    assert "$0.0020" in body  # loomview-demo-1 at 1 / 2 USD per million tokens
    # The input payload is decoded JSON, not base64.
    assert "Our dashboard sync is stuck" in body
    assert "call=1:fail=2" in body
    assert f"/namespaces/default/workflows/{run['workflow_id']}/{run['run_id']}/history" in body
    assert 'id="timeline-data"' in body
    assert "Temporal is unreachable" not in body


def test_model_calls_have_every_attempt_with_its_failure(
    client: Client, user: User, run: dict[str, Any], history_calls: list[str]
) -> None:
    store_spans(run)
    client.force_login(user)
    calls = client.get(f"/api{url(run)}").json()["model_calls"]
    assert [c["activity_id"] for c in calls] == ["1", "2", "4", "5"]
    first = calls[0]
    assert [a["attempt"] for a in first["attempts"]] == [1, 2, 3]
    assert [a["failed"] for a in first["attempts"]] == [True, True, False]
    assert "503 Service Unavailable" in first["attempts"][0]["error"]
    # Retry backoff: the second attempt starts well after the first ended.
    ends = [datetime.fromisoformat(a["end_time"]) for a in first["attempts"]]
    starts = [datetime.fromisoformat(a["start_time"]) for a in first["attempts"]]
    assert (starts[1] - ends[0]).total_seconds() > 0.1
    assert first["agent"] == "Triage agent"
    assert calls[1]["agent"] == "Technical support"
    assert first["scheduled_time"] is not None and first["closed_time"] is not None
    assert (first["tokens_in"], first["tokens_out"]) == (61, 52)


def test_timeline_draws_attempts_tools_and_handoffs_from_the_story(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    spans = {s.span_id: s for s in store_spans(run)}
    timeline = logged_in_client.get(url(run)).context["timeline"]
    assert timeline["lanes"] == ["Triage agent", "Technical support"]
    first = [a for a in timeline["attempts"] if a["c"] == 0]
    assert [(a["n"], a["f"]) for a in first] == [(1, True), (2, True), (3, False)]
    # A bar opens its attempt's generation span, with the model's error.
    assert {spans[a["span"]].kind for a in first} == {"generation"}
    assert "503 Service Unavailable" in first[0]["err"]
    points = [(p["k"], p["label"]) for p in timeline["points"]]
    assert points == [
        ("handoff", "Triage agent → Technical support"),
        ("tool", "check_service_status"),
        ("tool", "search_knowledge_base"),
    ]
    assert timeline["marks"] == []


def test_unknown_run_is_a_styled_404(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    response = logged_in_client.get("/runs/nope/00000000-0000-0000-0000-000000000000/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "Run not found" in body
    assert "Back to recent runs" in body
    assert 'class="topbar"' in body


def test_temporal_unreachable_serves_span_store_under_banner(
    logged_in_client: Client, run: dict[str, Any], closed_temporal_address: str
) -> None:
    store_spans(run)
    response = logged_in_client.get(url(run))
    assert response.status_code == 200
    body = response.content.decode()
    assert f"Temporal is unreachable at {closed_temporal_address}" in body
    assert 'role="alert"' in body
    assert 'data-total="model_calls">4<' in body
    assert "RunWorkflow:triage" in body


def test_without_a_history_the_duration_is_what_the_spans_cover_not_until_now(
    logged_in_client: Client, run: dict[str, Any], closed_temporal_address: str
) -> None:
    # Status unknown (no history) is not "running": a run recorded long ago must not
    # read as lasting until today.
    store_spans(run)
    spans = Span.objects.filter(workflow_id=run["workflow_id"], run_id=run["run_id"])
    extent = max(s.end_ns for s in spans) - min(s.start_ns for s in spans)
    body = logged_in_client.get(url(run)).content.decode()
    found = re.search(r'data-duration-ns="(\d+)"', body)
    assert found, body
    assert int(found.group(1)) == extent
    assert "Running for" not in body


def test_unknown_run_with_temporal_unreachable_is_404(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    cache.clear()
    response = logged_in_client.get("/runs/nope/run-x/")
    assert response.status_code == 404


def _hostile_span(run: dict[str, Any]) -> Span:
    generation = next(s for s in store_spans(run) if s.kind == "generation" and s.status_code == 0)
    attrs = generation.data["attributes"]
    answer = "<script>window.pwned=1</script><img src=x onerror=alert(1)>"
    attrs["gen_ai.output.messages"] = json.dumps([{"role": "assistant", "content": answer}])
    attrs["x.evil"] = "<b onmouseover=alert(2)>hi</b>"
    generation.status_message = ""
    generation.save()
    return generation


def test_model_output_with_markup_is_escaped_everywhere(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    span = _hostile_span(run)
    for path in (url(run), url(run, f"spans/{span.span_id}/")):
        body = logged_in_client.get(path).content.decode()
        assert "<script>window.pwned" not in body
        assert "<img src=x onerror" not in body
        assert "<b onmouseover" not in body
    detail = logged_in_client.get(url(run, f"spans/{span.span_id}/")).content.decode()
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in detail
    assert "&lt;b onmouseover=alert(2)&gt;hi&lt;/b&gt;" in detail


def test_span_tree_is_well_formed_and_escapes_span_names(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    span = _hostile_span(run)
    span.name = "<img src=x onerror=alert(3)>"
    span.save()
    # The span tree is the raw view; the agent view names rows after agents and models.
    body = logged_in_client.get(url(run) + "?trace=raw").content.decode()
    assert "<img src=x onerror=alert(3)>" not in body
    assert "&lt;img src=x onerror=alert(3)&gt;" in body
    assert "&lt;/details&gt;" not in body
    assert body.count("<details") == body.count("</details>") > 0
    agent_view = logged_in_client.get(url(run) + "?trace=agent").content.decode()
    assert "<img src=x onerror=alert(3)>" not in agent_view
    assert agent_view.count("<details") == agent_view.count("</details>") > 0


def test_span_detail_is_a_fragment_for_htmx_and_a_page_without(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    spans = store_spans(run)
    failed = next(s for s in spans if s.kind == "generation" and s.status_code == 2)
    fragment = logged_in_client.get(
        url(run, f"spans/{failed.span_id}/"), headers={"HX-Request": "true"}
    ).content.decode()
    assert fragment.lstrip().startswith("<article")
    assert "<html" not in fragment
    assert "Injected model failure on call 1" in fragment
    assert "temporal.activity.attempt" in fragment
    ok = next(s for s in spans if s.kind == "generation" and s.status_code == 0)
    answer = logged_in_client.get(
        url(run, f"spans/{ok.span_id}/"), headers={"HX-Request": "true"}
    ).content.decode()
    assert "Input messages" in answer and "Output" in answer
    assert "&quot;role&quot;: &quot;system&quot;" in answer  # pretty-printed JSON
    page = logged_in_client.get(url(run, f"spans/{failed.span_id}/")).content.decode()
    assert "<html" in page and "Injected model failure" in page


def test_span_of_another_run_is_404(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    span = store_spans(run)[0]
    response = logged_in_client.get(f"/runs/other/{run['run_id']}/spans/{span.span_id}/")
    assert response.status_code == 404


def test_history_json_downloads_raw_history_and_is_cached_once_closed(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    response = logged_in_client.get(url(run, "history.json"))
    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        'attachment; filename="demo-triage-retries-history.json"'
    )
    assert json.loads(response.content)["events"] == run["history"]
    logged_in_client.get(url(run))
    logged_in_client.get(url(run))
    assert len(history_calls) == 1


def test_history_compact_groups_activities_and_full_lists_every_event(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    compact = logged_in_client.get(url(run)).content.decode()
    assert "started (attempt 3)" in compact
    assert "previous attempt failed" in compact
    assert "WorkflowTaskScheduled" not in compact
    full = logged_in_client.get(
        url(run) + "?part=run-history&history=full", headers={"HX-Request": "true"}
    ).content.decode()
    assert full.lstrip().startswith('<section id="run-history"')
    assert full.count("<tr>") == len(run["history"]) + 1
    assert "WorkflowTaskScheduled" in full
    assert "eyJ" not in full  # no base64 payloads left


def test_a_long_history_loads_when_scrolled_to_from_the_history_alone(
    logged_in_client: Client,
    run: dict[str, Any],
    history_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashboard import run_page
    from tracing import store

    store_spans(run)
    monkeypatch.setattr(run_page, "HISTORY_INLINE_EVENTS", 10)
    page = logged_in_client.get(url(run)).content.decode()
    # The page leaves the history out, says how long it is and where it loads from.
    assert "data-history-lazy" in page
    assert "started (attempt 3)" not in page
    assert f"Full ({len(run['history'])} events)" in page
    assert 'hx-get="?part=run-history&amp;history=compact" hx-trigger="revealed"' in page
    # Asked for by name (no JavaScript), it is part of the page.
    named = logged_in_client.get(url(run) + "?history=compact").content.decode()
    assert "data-history-lazy" not in named and "started (attempt 3)" in named

    def no_spans(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the history section read the spans")

    monkeypatch.setattr(store, "run_skeleton", no_spans)
    monkeypatch.setattr(store, "spans_for_run", no_spans)
    part = logged_in_client.get(
        url(run) + "?part=run-history&history=compact", headers={"HX-Request": "true"}
    ).content.decode()
    assert part.lstrip().startswith('<section id="run-history"')
    assert "started (attempt 3)" in part and "previous attempt failed" in part
    assert "data-history-lazy" not in part
    assert len(history_calls) == 1  # closed: cached after the first read


def long_chat(turns: int) -> tuple[str, str]:
    """A chat run of ``turns`` model calls, each asked a message of its own (its spans
    as the bundled worker sends them: the activity's, and the generation under it)."""
    workflow_id, run_id = "long-chat", "long-chat-run"
    ms = 1_000_000
    t0 = 1_750_000_000_000_000_000
    base = {"temporal.workflow.id": workflow_id, "temporal.run.id": run_id}
    common = {"trace_id": "c" * 32, "workflow_id": workflow_id, "run_id": run_id}
    end = t0 + (turns + 1) * 10 * ms
    rows = [
        Span(span_id="root", parent_span_id="", name="RunWorkflow:conversation",
             kind="temporal", start_ns=t0, end_ns=end, duration_ns=end - t0,
             data={"attributes": {**base, "temporal.workflow.type": "conversation"}}, **common)
    ]  # fmt: skip
    for n in range(1, turns + 1):
        start = t0 + n * 10 * ms
        ids = {**base, "temporal.activity.id": str(n), "temporal.activity.attempt": 1,
               "temporal.activity.type": "invoke_model_activity"}  # fmt: skip
        rows.append(
            Span(span_id=f"a{n:07d}", parent_span_id="root",
                 name="RunActivity:invoke_model_activity", kind="temporal", start_ns=start,
                 end_ns=start + 5 * ms, duration_ns=5 * ms, activity_id=str(n), attempt=1,
                 data={"attributes": ids}, **common)
        )  # fmt: skip
        said = [{"role": "user", "content": f"message number {n}"}]
        answer = [{"role": "assistant", "content": f"answer number {n}"}]
        rows.append(
            Span(span_id=f"g{n:07d}", parent_span_id=f"a{n:07d}", name="chat demo",
                 kind="generation", start_ns=start, end_ns=start + 4 * ms, duration_ns=4 * ms,
                 activity_id=str(n), attempt=1, model="loomview-demo-1", tokens_in=10,
                 tokens_out=5, agent="Concierge",
                 data={"attributes": {**ids, "gen_ai.input.messages": json.dumps(said),
                                      "gen_ai.output.messages": json.dumps(answer)}}, **common)
        )  # fmt: skip
    Span.objects.bulk_create(rows)
    return workflow_id, run_id


def test_a_long_conversation_reads_a_bounded_page_at_a_time(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    from dashboard import run_views

    cache.clear()
    workflow_id, run_id = long_chat(250)
    page_size = run_views.TRANSCRIPT_PAGE
    base = f"/runs/{workflow_id}/{run_id}/conversation/"
    latest = logged_in_client.get(base).content.decode()
    assert "250 turns across 1 run" in latest
    # The latest turns only, in order, with the way back to the earlier ones.
    numbers = [int(n) for n in re.findall(r'data-turn="(\d+)"', latest)]
    assert numbers == list(range(251 - page_size, 251))
    assert "data-answer>answer number 250<" in latest
    assert "message number 1<" not in latest
    earlier = re.findall(r'href="([^"]+)" data-earlier', latest)
    assert earlier == [f"?before={251 - page_size}"]
    assert "data-later" not in latest
    back = logged_in_client.get(base + earlier[0]).content.decode()
    numbers = [int(n) for n in re.findall(r'data-turn="(\d+)"', back)]
    assert numbers == list(range(251 - 2 * page_size, 251 - page_size))
    # The first page ends the way back; later turns are a click away.
    first = logged_in_client.get(base + "?before=1").content.decode()
    assert re.findall(r'data-turn="(\d+)"', first) == []
    first = logged_in_client.get(base + f"?before={page_size + 1}").content.decode()
    numbers = [int(n) for n in re.findall(r'data-turn="(\d+)"', first)]
    assert numbers == list(range(1, page_size + 1))
    assert "data-earlier" not in first
    later = re.findall(r'href="([^"]+)" data-later', first)
    assert later == [f"?before={2 * page_size + 1}"]
    for nonsense in ("?before=-4", "?before=x", "?before=99999999999999", "?before=0"):
        response = logged_in_client.get(base + nonsense)
        assert response.status_code == 200
        assert len(re.findall(r'data-turn="', response.content.decode())) <= page_size


def test_the_run_page_shows_the_last_turns_of_a_long_conversation(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.history.v1 import History, HistoryEvent
    from temporalio.converter import default

    from dashboard import run_page

    cache.clear()
    workflow_id, run_id = long_chat(60)
    events = []
    for n in range(1, 61):
        event = HistoryEvent(
            event_id=n, event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        )
        event.event_time.FromNanoseconds(1_750_000_000_000_000_000 + n * 10_000_000)
        event.workflow_execution_signaled_event_attributes.signal_name = "user_message"
        event.workflow_execution_signaled_event_attributes.input.payloads.extend(
            default().payload_converter.to_payloads([f"message number {n}"])
        )
        events.append(event)

    async def fake(wf: str, run: str) -> temporal.RunHistory:
        return temporal.RunHistory(wf, run, History(events=events))

    monkeypatch.setattr(temporal, "fetch_history", fake)
    page = logged_in_client.get(f"/runs/{workflow_id}/{run_id}/").content.decode()
    section = page[page.index('<section id="run-conversation"') :]
    section = section[: section.index("</section>")]
    numbers = [int(n) for n in re.findall(r'data-turn="(\d+)"', section)]
    assert numbers == list(range(61 - run_page.RUN_PAGE_TURNS, 61))
    assert f"60 turns in this run: the last {run_page.RUN_PAGE_TURNS} below" in section
    assert "data-conversation-link" in section


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run ids whose spans the page reads from the store, in order."""
    from tracing import store

    seen: list[str] = []
    skeleton = store.run_skeleton

    def counted(workflow_id: str, run_id: str) -> store.Skeleton:
        seen.append(run_id)
        return skeleton(workflow_id, run_id)

    monkeypatch.setattr(store, "run_skeleton", counted)
    return seen


def test_the_run_is_read_and_correlated_once_until_its_spans_or_history_change(
    logged_in_client: Client,
    run: dict[str, Any],
    history_calls: list[str],
    reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashboard import run_page

    correlations: list[int] = []
    correlate = run_page.correlate

    def counted_correlate(*args: Any, **kwargs: Any) -> Any:
        correlations.append(1)
        return correlate(*args, **kwargs)

    monkeypatch.setattr(run_page, "correlate", counted_correlate)
    store_spans(run)
    first = logged_in_client.get(url(run)).content.decode()
    # The page again, a model call's detail, a trace node: the same spans, correlated once.
    assert logged_in_client.get(url(run)).content.decode().count("call-row") == first.count(
        "call-row"
    )
    assert logged_in_client.get(url(run, "calls/1/")).status_code == 200
    trace = logged_in_client.get(url(run, "trace/") + "?view=agent&node=run&offset=0&depth=0")
    assert trace.status_code == 200
    assert (len(reads), len(correlations)) == (1, 1)
    # A span stored since: read and correlated again, and shown.
    Span.objects.create(
        trace_id="f" * 32, span_id="late1", parent_span_id="", name="late <span>",
        kind="custom", workflow_id=run["workflow_id"], run_id=run["run_id"],
        start_ns=1, end_ns=2, duration_ns=1, data={},
    )  # fmt: skip
    raw = logged_in_client.get(url(run) + "?trace=raw").content.decode()
    assert "late &lt;span&gt;" in raw
    assert (len(reads), len(correlations)) == (2, 2)


def test_a_run_too_large_to_keep_is_read_again(
    logged_in_client: Client,
    run: dict[str, Any],
    history_calls: list[str],
    reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashboard import run_page

    store_spans(run)
    # Kept reads are bounded by their spans together; a run over half of that is not kept.
    monkeypatch.setattr(run_page, "READS_KEPT_SPANS", 2 * len(run["spans"]) - 2)
    for _ in range(2):
        assert logged_in_client.get(url(run)).status_code == 200
    assert len(reads) == 2
    assert not run_page._READS


def test_api_returns_story_for_session_and_bearer_token(
    client: Client, user: User, run: dict[str, Any], history_calls: list[str]
) -> None:
    store_spans(run)
    assert client.get(f"/api{url(run)}").status_code == 401
    _, raw = ApiToken.issue(user, "ci")
    response = client.get(f"/api{url(run)}", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200
    story = response.json()
    assert story["status"] == "COMPLETED"
    assert story["totals"]["model_calls"] == 4
    assert story["totals"]["failed_attempts"] == 2
    first = story["model_calls"][0]
    assert first["activity_id"] == "1"
    assert [a["failed"] for a in first["attempts"]] == [True, True, False]
    assert len(story["spans"]) == len(run["spans"])
    assert story["input"]["faults"] == ["call=1:fail=2", "call=3:slow=1500"]
    client.force_login(user)
    assert client.get(f"/api{url(run)}").json()["run_id"] == run["run_id"]
    assert client.get("/api/runs/x/y/").status_code == 404


def test_full_history_has_one_summary_line_per_event_with_details_a_click_away(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    full = logged_in_client.get(
        url(run) + "?part=run-history&history=full", headers={"HX-Request": "true"}
    ).content.decode()
    assert full.count("data-summary>") == len(run["history"])
    line = "invoke_model_activity #1 · → transfer_to_technical_support({}) · 61→52 tokens"
    assert f'<span class="ev-line" data-summary>{line}</span>' in full
    assert "attempt 3 · " in full and "last failure InjectedModelFault" in full
    # The details stay one click away: the summary line opens the event's attributes.
    assert full.count("<details><summary") == len(run["history"])
    assert full.count('<pre class="json">') == len(run["history"])


def test_conversation_page_reads_turns_and_unknown_runs_are_404(
    logged_in_client: Client, run: dict[str, Any], history_calls: list[str]
) -> None:
    store_spans(run)
    page = logged_in_client.get(url(run, "conversation/"))
    assert page.status_code == 200
    body = page.content.decode()
    prompt = "Our dashboard sync is stuck and the app shows errors since this morning."
    assert f"data-user>{prompt}<" in body
    assert "data-answer>Technical support engineer here." in body
    assert "check_service_status(" in body  # the tools the turn used
    assert "1 turn across 1 run" in body
    # The triage run received no message by signal or update: no Conversation section.
    assert 'id="run-conversation" hidden' in logged_in_client.get(url(run)).content.decode()
    assert logged_in_client.get(url({**run, "run_id": "nope"}, "conversation/")).status_code == 404
