from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from dashboard import views
from tracing import views as tracing_views

urlpatterns = [
    # runs
    path("", views.runs, name="dash-runs"),
    path("api/runs/", views.api_runs, name="dash-api-runs"),
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
    path("healthz", views.healthz, name="dash-healthz"),
    path("admin/", admin.site.urls),
]
