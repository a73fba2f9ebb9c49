"""The Django admin for tools as data. Every save goes through ``integrations.services``
(audited, versioned, validated): the admin never writes these tables itself.

- MCP servers: register and edit (a stdio command runs on the worker hosts: admins only).
- Tools: the form shows the active version; saving stores a new version (untick "needs
  review" once the tier is right for an imported tool). Versions are read-only below it.
- Credentials: the secret is a write-only field, encrypted before it is stored and never
  shown again (not even masked: the ciphertext stays out of the page too).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from console.errors import DomainError
from console.roles import ADMIN, has_role
from integrations import services
from integrations.models import Credential, McpServer, ToolDefinition, ToolVersion, Transport


class _AdminsOnly:
    """Admin role (or superuser) for every page of this app, whatever model permissions say."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return has_role(request.user, ADMIN)

    def has_view_permission(self, request, obj=None) -> bool:
        return has_role(request.user, ADMIN)

    def has_add_permission(self, request) -> bool:
        return has_role(request.user, ADMIN)

    def has_change_permission(self, request, obj=None) -> bool:
        return has_role(request.user, ADMIN)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # retire a tool with a version that is not enabled; keep the history


class ServiceForm(forms.ModelForm):
    """A form whose save is a service call, made when the form is validated: a refusal of
    the service (a DomainError) is a form error, and nothing was written. The model's own
    validation is the service's (``_post_clean`` does nothing), so a form that passed
    ``clean`` is valid and its write stands."""

    actor = None  # the request's user, set per request by ServiceAdmin.get_form
    change = False
    saved = None

    def call_service(self, data: dict):
        raise NotImplementedError

    def clean(self):
        data = super().clean()
        if not self.errors:
            try:
                self.saved = self.call_service(data)
            except DomainError as exc:
                raise forms.ValidationError(exc.message) from None
        return data

    def _post_clean(self) -> None:
        pass


class ServiceAdmin(_AdminsOnly, admin.ModelAdmin):
    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"actor": request.user, "change": obj is not None})

    def save_form(self, request, form, change):
        return form.saved  # written by the form's service call

    def save_model(self, request, obj, form, change):
        pass

    def save_related(self, request, form, formsets, change):
        pass  # versions are written by the services, never through an inline

    def construct_change_message(self, request, form, formsets, add=False):
        return [{"added": {}}] if add else [{"changed": {"fields": form.changed_data}}]


class McpServerForm(ServiceForm):
    url = forms.URLField(assume_scheme="https", required=False, max_length=500,
                         help_text="Streamable HTTP endpoint, e.g. https://billing.example.com/mcp")

    class Meta:
        model = McpServer
        fields = ("tenant", "slug", "name", "transport", "url", "command", "timeout_seconds", "is_active")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:
            self.fields["tenant"].disabled = True
            self.fields["slug"].disabled = True

    def call_service(self, data):
        fields = {k: data[k] for k in ("name", "transport", "url", "command", "timeout_seconds")}
        fields["command"] = fields["command"] or []
        if self.change:
            return services.mcp_server_update(actor=self.actor, server=self.instance,
                                              is_active=data["is_active"], **fields)
        return services.mcp_server_register(actor=self.actor, slug=data["slug"], tenant=data["tenant"],
                                            **fields)


@admin.register(McpServer)
class McpServerAdmin(ServiceAdmin):
    form = McpServerForm
    list_display = ("slug", "tenant", "transport", "url", "is_active", "updated_at")
    list_filter = ("tenant", "transport", "is_active")
    actions = ["import_tools"]

    @admin.action(description="Import the selected servers' tools (tools/list)")
    def import_tools(self, request, queryset):
        for server in queryset:
            try:
                report = services.mcp_tools_import(actor=request.user, server=server)
            except DomainError as exc:
                messages.error(request, f"{server.slug}: {exc.message}")
                continue
            messages.info(request, f"{server.slug}: created {len(report.created)}, updated "
                                   f"{len(report.updated)}, unchanged {len(report.unchanged)}, skipped "
                                   f"{len(report.skipped)}. New tools need review (write_high, approval).")


class ToolForm(ServiceForm):
    """The tool's identity plus the fields of its next version (initially the active one)."""

    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))
    parameters = forms.JSONField(help_text="JSON Schema of the arguments (type object).")
    tier = forms.ChoiceField(choices=ToolVersion._meta.get_field("tier").choices)
    transport = forms.ChoiceField(choices=Transport.choices)
    credential_scope = forms.CharField(required=False)
    http = forms.JSONField(required=False, help_text='http transport: {"method": "GET", "url": '
                           '"https://api.example.com/v1/invoices/{invoice_id}", "response_fields": {...}}')
    server = forms.ModelChoiceField(queryset=McpServer.objects.all(), required=False)
    remote_name = forms.CharField(required=False, help_text="mcp transport: the tool's name on the server")
    timeout_seconds = forms.FloatField(initial=10.0)
    max_attempts = forms.IntegerField(initial=3, min_value=1, max_value=5)
    idempotent = forms.BooleanField(required=False)
    side_effects = forms.BooleanField(required=False, initial=True)
    max_result_chars = forms.IntegerField(initial=8000, min_value=100)
    needs_review = forms.BooleanField(
        required=False,
        help_text="Every call needs approval whatever the policy says. Set on import from an MCP "
                  "server; untick once the tier is right.",
    )
    enabled = forms.BooleanField(required=False, initial=True)
    note = forms.CharField(required=False, help_text="Why this change (kept with the version).")

    class Meta:
        model = ToolDefinition
        fields = ("tenant", "name")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        version = None if self.instance._state.adding else self.instance.active_version
        if version is not None:
            for name in services.VERSION_FIELDS:
                self.initial[name] = getattr(version, name)
            self.fields["tenant"].disabled = True
            self.fields["name"].disabled = True

    def call_service(self, data):
        fields = {name: data.get(name) for name in services.VERSION_FIELDS}
        fields["http"] = data.get("http") or {}
        fields["credential_scope"] = data.get("credential_scope") or ""
        fields["remote_name"] = data.get("remote_name") or ""
        note = data.get("note") or ""
        if self.change:
            services.tool_version_create(actor=self.actor, tool=self.instance, note=note, **fields)
            return self.instance
        return services.tool_register(
            actor=self.actor, name=data["name"], tenant=data.get("tenant"), note=note,
            description=fields.pop("description"), parameters=fields.pop("parameters"),
            tier=fields.pop("tier"), transport=fields.pop("transport"), **fields,
        )


class ToolVersionInline(admin.TabularInline):
    model = ToolVersion
    fk_name = "tool"
    extra = 0
    can_delete = False
    fields = ("version", "tier", "transport", "needs_review", "enabled", "created_by", "created_at", "note")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ToolDefinition)
class ToolDefinitionAdmin(ServiceAdmin):
    form = ToolForm
    list_display = ("name", "tenant", "source", "active_tier", "active_transport", "active_number", "review")
    list_filter = ("tenant", "source")
    search_fields = ("name",)
    inlines = [ToolVersionInline]

    @admin.display(description="tier")
    def active_tier(self, obj):
        return obj.active_version.tier if obj.active_version else "-"

    @admin.display(description="transport")
    def active_transport(self, obj):
        return obj.active_version.transport if obj.active_version else "-"

    @admin.display(description="version")
    def active_number(self, obj):
        return obj.active_version.version if obj.active_version else "-"

    @admin.display(description="needs review", boolean=True)
    def review(self, obj):
        return bool(obj.active_version and obj.active_version.needs_review)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant", "active_version")


class CredentialForm(ServiceForm):
    secret = forms.CharField(widget=forms.PasswordInput(render_value=False), required=False,
                             help_text="Write-only: stored encrypted, never shown again. "
                                       "Leave empty to keep the stored one.")

    class Meta:
        model = Credential
        fields = ("tenant", "scope", "tool", "placement", "name", "prefix")

    def call_service(self, data):
        if not data.get("secret"):
            raise DomainError("Type the secret: the stored one is never read back into a form, so a "
                              "change (or a new credential) needs it.")
        return services.credential_store(actor=self.actor, tenant=data["tenant"], scope=data["scope"],
                                         tool=data.get("tool"), placement=data["placement"],
                                         name=data["name"], prefix=data.get("prefix") or "",
                                         secret=data["secret"])


@admin.register(Credential)
class CredentialAdmin(ServiceAdmin):
    form = CredentialForm
    list_display = ("tenant", "scope", "tool", "placement", "name", "created_at", "rotated_at")
    list_filter = ("tenant", "placement")
