from console.navigation import visible_entries
from console.roles import user_roles


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_entries": [], "user_roles": frozenset()}
    return {"nav_entries": visible_entries(user), "user_roles": user_roles(user)}
