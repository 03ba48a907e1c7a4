from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Loomview dashboard"

    def ready(self) -> None:
        from tracing.retention import register_run_table

        # A replay's copy of its call (prompts and answers) goes with the run.
        register_run_table("dashboard.Replay")
