"""Review queues. Reviewers hold django-guardian object permissions on a queue:
``view_reviewqueue`` to see its requests and ``decide_reviewqueue`` to decide them."""

from __future__ import annotations

import uuid

from django.db import models


class ReviewQueue(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    tools = models.JSONField(default=list, blank=True)  # tool names this queue covers
    tiers = models.JSONField(default=list, blank=True)  # tool tiers this queue covers
    sla_minutes = models.PositiveIntegerField(default=240)
    capacity = models.PositiveIntegerField(default=500)
    escalation_queue = models.ForeignKey("self", null=True, blank=True,
                                         on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["name"]
        permissions = [("decide_reviewqueue", "Can decide requests in this queue")]
        constraints = [
            models.CheckConstraint(condition=models.Q(sla_minutes__gt=0), name="queue_sla_positive"),
            models.CheckConstraint(condition=models.Q(capacity__gt=0), name="queue_capacity_positive"),
        ]

    def __str__(self) -> str:
        return self.name
