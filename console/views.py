from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.heartbeat import live_workers


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The operator dashboard. Later issues add runs, costs, approvals and switches."""
    context = {"workers": list(live_workers().order_by("hostname"))}
    return render(request, "console/dashboard.html", context)
