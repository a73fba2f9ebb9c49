from django.urls import path

from approvals import views

urlpatterns = [
    path("approvals/", views.approvals_page, name="approvals"),
    path("approvals/bulk-approve/", views.approvals_bulk_approve, name="approvals_bulk_approve"),
    path("approvals/<uuid:request_id>/", views.approval_detail, name="approval_detail"),
    path("approvals/<uuid:request_id>/trace/", views.approval_trace, name="approval_trace"),
    path("approvals/<uuid:request_id>/claim/", views.approval_claim_view, name="approval_claim"),
    path("approvals/<uuid:request_id>/release/", views.approval_release_view, name="approval_release"),
    path("approvals/<uuid:request_id>/decide/", views.approval_decide_view, name="approval_decide"),
    path("handoffs/", views.handoffs_page, name="handoffs"),
    path("handoffs/<uuid:handoff_id>/take/", views.handoff_take_view, name="handoff_take"),
    path("handoffs/<uuid:handoff_id>/resolve/", views.handoff_resolve_view, name="handoff_resolve"),
]
