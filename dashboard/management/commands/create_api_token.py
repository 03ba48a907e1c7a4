"""Create a bearer token for the JSON API; the token is printed once, only its digest is kept."""

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from dashboard.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME named NAME and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("name", help="what the token is for, e.g. 'grafana'")
        parser.add_argument(
            "--expires-days",
            type=int,
            default=None,
            help="refuse the token this many days from now (default: never)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: options["username"]})
        except user_model.DoesNotExist:
            raise CommandError(f"no user named {options['username']!r}") from None
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("the token name must be 1 to 100 characters")
        if ApiToken.objects.filter(user=user, name=name).exists():
            raise CommandError(f"{options['username']} already has a token named {name!r}")
        days = options["expires_days"]
        if days is not None and not 1 <= days <= 3650:
            raise CommandError("--expires-days must be from 1 to 3650")
        expires = timezone.now() + timedelta(days=days) if days is not None else None
        _, raw = ApiToken.issue(user, name, expires)
        self.stdout.write(raw)
        self.stderr.write("Store it now: it is shown only this once.")
