"""Give a user the viewer or the operator role: `manage.py set_role ada operator`."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser

ROLES = {"viewer": "Viewers", "operator": "Operators"}


class Command(BaseCommand):
    help = "Make a user a viewer (read only) or an operator (may act on runs)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=sorted(ROLES))

    def handle(self, *args: Any, username: str, role: str, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        groups = {name: Group.objects.filter(name=name).first() for name in ROLES.values()}
        missing = [name for name, group in groups.items() if group is None]
        if missing:
            raise CommandError(f"group {missing[0]!r} is missing; run `manage.py migrate`")
        user.groups.remove(*[g for g in groups.values() if g is not None])
        group = groups[ROLES[role]]
        assert group is not None
        user.groups.add(group)
        note = " (a superuser can do everything whatever the role)" if user.is_superuser else ""
        self.stdout.write(
            f"{username} is now an {role}{note}"
            if role == "operator"
            else f"{username} is now a {role}{note}"
        )
