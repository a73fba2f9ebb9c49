from django.contrib import admin

from console.models import ApiToken, ServiceAccount, Tenant, TenantMembership, WorkerHeartbeat

admin.site.register(Tenant)
admin.site.register(TenantMembership)
admin.site.register(ServiceAccount)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "token_hash", "user", "created_at", "last_used_at", "revoked_at")

    def has_add_permission(self, request):  # tokens are issued by token_issue, shown once
        return False


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("hostname", "pid", "last_seen")
