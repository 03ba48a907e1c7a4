"""Create a bearer token for the JSON API; the token is printed once, only its digest is kept."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME named NAME and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("name", help="what the token is for, e.g. 'grafana'")

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
        _, raw = ApiToken.issue(user, name)
        self.stdout.write(raw)
        self.stderr.write("Store it now: it is shown only this once.")
