from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: no add, change or delete path exists for audit events."""

    list_display = ("seq", "occurred_at", "actor_label", "action", "tenant", "object_type",
                    "object_id", "trace_id")
    list_filter = ("action", "actor_type")
    search_fields = ("actor_label", "object_id", "trace_id")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        return {}
