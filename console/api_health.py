from django.http import HttpRequest, JsonResponse
from ninja import Router

from console.health import health

router = Router(tags=["health"])


@router.get("/health", auth=None, summary="Database, broker and worker status (503 if any fails)")
def get_health(request: HttpRequest):
    ok, body = health()
    return JsonResponse(body, status=200 if ok else 503)


@router.get("/me", summary="Who the caller is: user, roles, service-account tenant")
def get_me(request: HttpRequest):
    from console.roles import user_roles

    user = request.auth
    service = getattr(user, "service_account", None)
    return {
        "username": user.username,
        "roles": sorted(user_roles(user)),
        "service_account_tenant": service.tenant.slug if service else None,
        "auth": getattr(request, "auth_method", "session"),
    }


@router.post("/tokens/{prefix}/revoke", summary="Revoke one of your tokens (admins: any token)")
def revoke_token(request: HttpRequest, prefix: str):
    from console.access import token_for_revoke
    from console.services import token_revoke

    token = token_for_revoke(user=request.auth, prefix=prefix)
    token = token_revoke(actor=request.auth, token=token)
    return {"prefix": token.prefix, "revoked_at": token.revoked_at}
