from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "lv_"


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits, so a plain digest is enough: there is nothing
    # to brute-force that a slow password hash would protect.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token for the JSON API; only its digest is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    # After this moment the token is refused; null: it never expires.
    expires = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="apitoken_user_name_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"

    @property
    def expired(self) -> bool:
        return self.expires is not None and self.expires <= timezone.now()

    @classmethod
    def issue(
        cls, user: models.Model, name: str, expires: datetime | None = None
    ) -> tuple[ApiToken, str]:
        """Create a token; the raw value is returned once and never stored."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, token_hash=hash_token(raw), expires=expires
        )
        return token, raw


OPERATE_RUNS = "dashboard.operate_runs"


class AuditEntry(models.Model):
    """One action a user took on Temporal through Loomview, whatever its outcome.

    Written once and never edited: the admin shows it read-only and no view
    changes or deletes it.
    """

    class Outcome(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        DENIED = "denied", "Denied"

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Kept beside the foreign key so the entry still names its author after
    # the account is deleted.
    username = models.CharField(max_length=150, db_index=True)
    action = models.CharField(max_length=32, db_index=True)
    workflow_id = models.CharField(max_length=1000, blank=True, db_index=True)
    run_id = models.CharField(max_length=64, blank=True, db_index=True)
    payload = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    message = models.TextField(blank=True)
    # The run an action created: a reset, a run again, a start.
    new_workflow_id = models.CharField(max_length=1000, blank=True)
    new_run_id = models.CharField(max_length=64, blank=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]
        permissions = [
            ("operate_runs", "Can act on runs: signal, query, update, reset, stop, start")
        ]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M:%S} {self.username} {self.action} {self.outcome}"

    @property
    def payload_json(self) -> str:
        return json.dumps(self.payload, ensure_ascii=False) if self.payload else ""


class Replay(models.Model):
    """One model call run again, with edited messages, model or settings, through the worker.

    The original call's input and output are kept beside the replay's, so a
    replay still reads (and compares) after its run is gone from Temporal.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    username = models.CharField(max_length=150)
    # The call replayed: run, activity, model call number, agent, generation span.
    workflow_id = models.CharField(max_length=1000)
    run_id = models.CharField(max_length=64)
    activity_id = models.CharField(max_length=255)
    call_number = models.IntegerField(default=0)
    agent = models.CharField(max_length=255, blank=True)
    span_id = models.CharField(max_length=64, blank=True)
    # "history": the exact model input from the scheduled activity; "spans": its messages only.
    source = models.CharField(max_length=16, default="history")
    original_model = models.CharField(max_length=255, blank=True)
    original_system = models.TextField(blank=True)
    original_input = models.JSONField(null=True, blank=True)
    original_settings = models.JSONField(default=dict, blank=True)
    original_output = models.JSONField(null=True, blank=True)
    original_tokens_in = models.IntegerField(null=True, blank=True)
    original_tokens_out = models.IntegerField(null=True, blank=True)
    original_latency_ms = models.FloatField(null=True, blank=True)
    # What was sent this time.
    model = models.CharField(max_length=255, blank=True)
    system = models.TextField(blank=True)
    input = models.JSONField(null=True, blank=True)
    model_settings = models.JSONField(default=dict, blank=True)
    task_queue = models.CharField(max_length=255)
    replay_workflow_id = models.CharField(max_length=1000, blank=True)
    replay_run_id = models.CharField(max_length=64, blank=True)
    # What came back.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    output = models.JSONField(null=True, blank=True)
    response_model = models.CharField(max_length=255, blank=True)
    tokens_in = models.IntegerField(null=True, blank=True)
    tokens_out = models.IntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["workflow_id", "run_id"], name="replay_run")]

    def __str__(self) -> str:
        return f"replay {self.pk} of {self.workflow_id} / {self.run_id} call {self.call_number}"

    @property
    def is_pending(self) -> bool:
        return self.status == self.Status.PENDING

    @property
    def cost(self) -> Decimal | None:
        """Estimated USD of the replay's answer, from the model price table."""
        from dashboard.replays import cost

        model = self.response_model or self.model or self.original_model
        return cost(model, self.tokens_in, self.tokens_out)
