from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from dashboard import (
    action_views,
    compare_views,
    export_views,
    list_views,
    ops_views,
    overview_views,
    replay_views,
    run_views,
    token_views,
)
from tracing import views as tracing_views

urlpatterns = [
    # runs
    path("", list_views.runs, name="dash-runs"),
    path("api/runs/", list_views.api_runs, name="dash-api-runs"),
    # the fleet overview
    path("overview/", overview_views.overview_page, name="dash-overview"),
    path("overview/data.json", overview_views.overview_data, name="dash-overview-data"),
    # one run
    path("runs/<str:workflow_id>/<str:run_id>/", run_views.run, name="dash-run"),
    path(
        "runs/<str:workflow_id>/<str:run_id>/spans/<str:span_id>/",
        run_views.span_detail,
        name="dash-run-span",
    ),
    path("runs/<str:workflow_id>/<str:run_id>/trace/", run_views.run_trace, name="dash-run-trace"),
    path(
        "runs/<str:workflow_id>/<str:run_id>/calls/<str:activity_id>/",
        run_views.call_detail,
        name="dash-run-call",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/conversation/",
        run_views.conversation,
        name="dash-run-conversation",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/history.json",
        run_views.history_json,
        name="dash-run-history-json",
    ),
    path("api/runs/<str:workflow_id>/<str:run_id>/", run_views.api_run, name="dash-api-run"),
    # acting on runs (operators), and the audit log of every action
    path("runs/new/", action_views.new_run, name="dash-run-new"),
    path(
        "runs/<str:workflow_id>/<str:run_id>/actions/",
        action_views.run_actions,
        name="dash-run-actions",
    ),
    path("runs/<str:workflow_id>/<str:run_id>/now/", action_views.run_now, name="dash-run-now"),
    path(
        "runs/<str:workflow_id>/<str:run_id>/handlers/",
        action_views.run_handlers,
        name="dash-run-handlers",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/signal/",
        action_views.run_signal,
        name="dash-run-signal",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/query/", action_views.run_query, name="dash-run-query"
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/update/",
        action_views.run_update,
        name="dash-run-update",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/reset/", action_views.run_reset, name="dash-run-reset"
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/again/", action_views.run_again, name="dash-run-again"
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/cancel/",
        action_views.run_cancel,
        name="dash-run-cancel",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/terminate/",
        action_views.run_terminate,
        name="dash-run-terminate",
    ),
    path("audit/", action_views.audit, name="dash-audit"),
    # comparing runs, and replaying model calls (operators)
    path("compare/", compare_views.compare_page, name="dash-compare"),
    path("compare/previous/", compare_views.compare_previous, name="dash-compare-previous"),
    path(
        "runs/<str:workflow_id>/<str:run_id>/compare/",
        compare_views.run_compare_panel,
        name="dash-run-compare",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/calls/<str:activity_id>/replay/",
        replay_views.call_replay,
        name="dash-call-replay",
    ),
    path("replays/<int:pk>/", replay_views.replay_page, name="dash-replay"),
    path("replays/compare/", replay_views.replays_compare, name="dash-replays-compare"),
    # exports to OTLP collectors
    path("exports/", export_views.exports, name="dash-exports"),
    path("exports/jobs/<int:job_id>/", export_views.run_export_job, name="dash-export-job"),
    path(
        "runs/<str:workflow_id>/<str:run_id>/otlp.json",
        export_views.run_otlp_json,
        name="dash-run-otlp-json",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/export/",
        export_views.run_export,
        name="dash-run-export",
    ),
    path(
        "runs/<str:workflow_id>/<str:run_id>/export/panel/",
        export_views.run_export_panel,
        name="dash-run-export-panel",
    ),
    # API tokens
    path("tokens/", token_views.tokens, name="dash-tokens"),
    path("tokens/new/", token_views.token_new, name="dash-token-new"),
    path("tokens/<int:token_id>/revoke/", token_views.token_revoke, name="dash-token-revoke"),
    # accounts
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="dashboard/login.html", redirect_authenticated_user=True
        ),
        name="dash-login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="dash-logout"),
    # OTLP/HTTP trace receiver (standard path, so exporters need only the base URL)
    path("v1/traces", tracing_views.receive_traces, name="otlp-traces"),
    # operations
    path("healthz", ops_views.healthz, name="dash-healthz"),
    path("metrics", ops_views.metrics, name="dash-metrics"),
    path("admin/", admin.site.urls),
]
