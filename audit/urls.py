from django.urls import path

from audit import views

urlpatterns = [
    path("audit/", views.audit_events, name="audit"),
    path("audit/verify/", views.audit_verify, name="audit_verify"),
    path("audit/approvals/", views.audit_approvals, name="audit_approvals"),
]
