from django.contrib import admin
from django.http import HttpRequest

from dashboard.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log, read-only: nobody adds, edits or deletes an entry here."""

    list_display = ("created", "username", "action", "workflow_id", "run_id", "outcome")
    list_filter = ("action", "outcome")
    search_fields = ("username", "workflow_id", "run_id", "message")
    date_hierarchy = "created"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False
