from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from console import views, views_tokens
from console.api import api, error_response


def api_not_found(request: HttpRequest, rest: str = ""):
    return error_response(404, "not_found", f"No API endpoint at /api/v1/{rest}. "
                          "See /api/v1/docs for the list.")


urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    # browsers ask for /favicon.ico on pages without a <link rel=icon> (the API docs)
    path("favicon.ico", RedirectView.as_view(url=static("console/favicon.svg"), permanent=True)),
    path("switches/", views.switches_page, name="switches"),
    path("switches/<str:scope>/<str:target>/confirm/", views.switch_confirm, name="switch_confirm"),
    path("switches/<str:scope>/<str:target>/flip/", views.switch_flip, name="switch_flip"),
    path("runs/", views.runs_page, name="runs"),
    path("runs/<uuid:public_id>/", views.run_detail, name="run_detail"),
    path("tokens/", views_tokens.tokens_page, name="tokens"),
    path("tokens/new/", views_tokens.token_create, name="token_create"),
    path("tokens/<str:prefix>/revoke/", views_tokens.token_revoke_view, name="token_revoke"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<rest>.*)$", api_not_found),
    path("admin/", admin.site.urls),
    path("", include("agents.urls")),
    path("", include("approvals.urls")),
    path("", include("audit.urls")),
]
